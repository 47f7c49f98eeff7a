// SPDX-License-Identifier: MIT
/*
 * patch.c - the apply and disable transactions, with the kernel's atomic-replace
 * semantics, and the patches loaded.
 *
 * A patch changes objects (the program, shared libraries), each matched by build-id
 * among the objects the process has loaded.  A new patch replaces the installed patch
 * that changes one of its objects (patches of disjoint objects, the program's and a
 * library's, are installed side by side).
 *
 * apply: load the object, check its descriptor, find its objects, check every original's
 * entry and every ref of those loaded; store the refs; check the states against the
 * patch it replaces; run pre_patch; then one switch moves every function of the new
 * patch to its replacement and gives every function the replaced patch redirected, and
 * the new one does not carry, its NOPs back.  post_patch runs after the switch; the
 * replaced patch is unloaded unless a thread may still run its code (an immediate
 * function, or a frame inside it at the final stop).  Until the switch nothing the
 * program can see changes; after a failure before it, the new object is unloaded and
 * the installed patch stays.
 *
 * Objects that come and go (klp_objects_sync, after a dlopen or dlclose): the functions
 * of a library loaded after the apply are switched as it loads; a library unloaded
 * takes its redirects with it and its functions wait for it again.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <dlfcn.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <link.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

struct pfunc {
	const struct klpcc_func *f;
	struct klp_site *site;		/* NULL while its object is not loaded */
	uintptr_t copy_lo, copy_hi;	/* the replacement's code */
};

struct pobj {
	const struct klpcc_object *o;
	int loaded;			/* its functions have sites, its refs are stored */
	struct klp_module mod;		/* where it is loaded, when it is */
	uintptr_t failed_bias;		/* patching it failed as it loaded there: not again */
	char error[600];		/* why */
};

struct patch {
	struct patch *next;		/* loaded patches, newest first */
	void *handle;
	char *path;
	int fd;				/* the descriptor it was loaded from (-1: its path) */
	struct stat st;
	const struct klpcc_patch *desc;
	struct klp_object_map map;
	struct pfunc *funcs;
	unsigned nfuncs;
	struct pobj *objs;
	unsigned nobjs;
	struct klp_states *states;
	int has_immediate;
	int installed;			/* in force (else replaced, still loaded) */
};

static struct patch *loaded;
static unsigned long applies;

struct pins {
	void **v;
	size_t n, cap;
};

static int holding;		/* hold libraries while writing (klp_hold_libraries) */
static struct pins *held;	/* the transaction's holds, for resolve() to add to */

void klp_hold_libraries(void)
{
	holding = 1;
}

/* Hold the library m while the transaction writes it; 0, or -1 if it is gone. */
static int hold(const struct klp_module *m)
{
	void *h;

	if (!holding || !m->path[0])
		return 0;
	h = klp_real_dlopen(m->path, RTLD_NOW | RTLD_NOLOAD);
	if (!h)
		return -1;
	if (held && held->n == held->cap) {
		size_t cap = held->cap ? 2 * held->cap : 16;
		void **v = realloc(held->v, cap * sizeof(*v));

		if (!v) {
			klp_real_dlclose(h);
			return -1;
		}
		held->v = v;
		held->cap = cap;
	}
	if (held)
		held->v[held->n++] = h;
	else
		klp_real_dlclose(h);
	return 0;
}


/* Record why the request failed; returns -1. */
static int fail(struct klp_outcome *out, const char *step, const char *fmt, ...)
	KLP_PRINTF(3, 4);

static int fail(struct klp_outcome *out, const char *step, const char *fmt, ...)
{
	va_list ap;

	out->step = step;
	va_start(ap, fmt);
	vsnprintf(out->error, sizeof(out->error), fmt, ap);
	va_end(ap);
	for (char *p = out->error; *p; p++) /* one line */
		if (*p == '\n' || *p == '\r')
			*p = ' ';
	return -1;
}

static void list_add(struct klp_json *list, const char *s)
{
	if (list->len)
		klp_json_raw(list, ",");
	klp_json_str(list, s);
}

void klp_outcome_free(struct klp_outcome *out)
{
	free(out->patch);
	klp_json_free(&out->replaced);
	klp_json_free(&out->unloaded);
	klp_json_free(&out->nops);
	klp_json_free(&out->pending);
}

/* ---- loading and checking -------------------------------------------------------------- */

static void free_patch(struct patch *p)
{
	if (p->handle)
		klp_real_dlclose(p->handle);
	if (p->fd >= 0)
		close(p->fd);
	if (p->states)
		klp_states_retire(p->states);
	free(p->funcs);
	free(p->objs);
	free(p->path);
	free(p);
}

static int holds_code(const struct patch *p, const void *fn)
{
	return klp_object_holds(&p->map, (uintptr_t)fn, (uintptr_t)fn + 1, PROT_EXEC);
}

static int check_descriptor(struct patch *p, struct klp_outcome *out)
{
	const struct klpcc_patch *d = p->desc;
	const char *m;

	if (d->abi != KLPCC_ABI)
		return fail(out, "descriptor", "descriptor abi %u, the runtime reads abi %d", d->abi,
			    KLPCC_ABI);
	if (!d->name || !*d->name)
		return fail(out, "descriptor", "the patch has no name");
	for (m = d->manifest; m && isspace((unsigned char)*m); m++)
		;
	if (!m || *m != '{')
		return fail(out, "descriptor", "%s: the manifest is %s", d->name,
			    !m || !*m ? "missing" : "not a JSON object");
	if (!d->nobjects || !d->objects)
		return fail(out, "descriptor", "%s: no object", d->name);
	if ((d->nfuncs && !d->funcs) || (d->nrefs && !d->refs) || (d->nstates && !d->states))
		return fail(out, "descriptor", "%s: a table is missing", d->name);
	for (unsigned i = 0; i < d->nobjects; i++) {
		const struct klpcc_object *o = &d->objects[i];

		if (!o->name || !o->build_id || !*o->build_id ||
		    strspn(o->build_id, "0123456789abcdef") != strlen(o->build_id))
			return fail(out, "descriptor", "%s: object %u has no name or build-id", d->name, i);
		for (unsigned k = 0; k < i; k++)
			if (!strcmp(d->objects[k].build_id, o->build_id))
				return fail(out, "descriptor", "%s: build-id %s listed twice", d->name,
					    o->build_id);
	}
	for (unsigned i = 0; i < d->nfuncs; i++) {
		const struct klpcc_func *f = &d->funcs[i];

		if (!f->name || !*f->name)
			return fail(out, "descriptor", "%s: function %u has no name", d->name, i);
		if (f->object >= d->nobjects)
			return fail(out, "descriptor", "%s: function %s has no object", d->name, f->name);
		if (!f->new_func || !holds_code(p, f->new_func))
			return fail(out, "descriptor",
				    "%s: the replacement of %s is not code of the patch object",
				    d->name, f->name);
	}
	for (unsigned i = 0; i < d->nrefs; i++) {
		const struct klpcc_ref *r = &d->refs[i];

		if (!r->name || !r->slot || r->object >= d->nobjects ||
		    !klp_object_holds(&p->map, (uintptr_t)r->slot, (uintptr_t)(r->slot + 1),
				      PROT_WRITE))
			return fail(out, "descriptor", "%s: ref %s has no writable slot in the object",
				    d->name, r->name ? r->name : "(unnamed)");
	}
	for (unsigned i = 0; i < d->nstates; i++)
		for (unsigned k = 0; k < i; k++)
			if (d->states[k].id == d->states[i].id)
				return fail(out, "descriptor", "%s: state %lu declared twice", d->name,
					    d->states[i].id);
	if ((d->pre_patch && !holds_code(p, (const void *)d->pre_patch)) ||
	    (d->post_patch && !holds_code(p, (const void *)d->post_patch)) ||
	    (d->pre_unpatch && !holds_code(p, (const void *)d->pre_unpatch)) ||
	    (d->post_unpatch && !holds_code(p, (const void *)d->post_unpatch)))
		return fail(out, "descriptor", "%s: a callback is not code of the patch object",
			    d->name);
	return 0;
}

/* Whether the file holds what its ELF headers say it does: dlopen's messages about a
 * truncated object are vague, and mapping one may fault later. */
static int check_file(const char *src, const char *path, off_t size, struct klp_outcome *out)
{
	Elf64_Ehdr eh;
	Elf64_Phdr ph;
	uint64_t need;
	int fd = open(src, O_RDONLY | O_CLOEXEC), rc = -1;

	if (fd < 0) {
		fail(out, "read", "%s: %s", path, strerror(errno));
		return -1;
	}
	if (pread(fd, &eh, sizeof(eh), 0) != (ssize_t)sizeof(eh) || memcmp(eh.e_ident, ELFMAG, SELFMAG)) {
		fail(out, "read", "%s: not an ELF file", path);
		goto out;
	}
	if (eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_type != ET_DYN || eh.e_machine != EM_X86_64 ||
	    eh.e_phentsize != sizeof(ph)) {
		fail(out, "read", "%s: not an x86-64 ELF shared object", path);
		goto out;
	}
	need = eh.e_phoff + (uint64_t)eh.e_phnum * sizeof(ph);
	if (eh.e_shnum && eh.e_shoff + (uint64_t)eh.e_shnum * eh.e_shentsize > need)
		need = eh.e_shoff + (uint64_t)eh.e_shnum * eh.e_shentsize;
	for (unsigned i = 0; i < eh.e_phnum && need <= (uint64_t)size; i++) {
		if (pread(fd, &ph, sizeof(ph), (off_t)(eh.e_phoff + i * sizeof(ph))) != (ssize_t)sizeof(ph))
			break;
		if (ph.p_type == PT_LOAD && ph.p_offset + ph.p_filesz > need)
			need = ph.p_offset + ph.p_filesz;
	}
	if (need > (uint64_t)size) {
		fail(out, "read", "%s: truncated (%lld bytes, its headers describe %llu)", path,
		     (long long)size, (unsigned long long)need);
		goto out;
	}
	rc = 0;
out:
	close(fd);
	return rc;
}

/* The object behind the descriptor a client sent, copied into a memfd; -1 on failure. */
static int copy_object(int fd, off_t size, const char *path, struct klp_outcome *out)
{
	char buf[65536];
	off_t at = 0;
	int mfd = memfd_create("klpcc-patch", MFD_CLOEXEC);

	if (mfd < 0) {
		fail(out, "read", "%s: memfd_create: %s", path, strerror(errno));
		return -1;
	}
	while (at < size) {
		ssize_t n = pread(fd, buf, sizeof(buf), at);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0 || write(mfd, buf, (size_t)n) != n) {
			fail(out, "read", "%s: cannot read it from the descriptor: %s", path,
			     n < 0 ? strerror(errno) : n == 0 ? "it got shorter" : "cannot copy it");
			close(mfd);
			return -1;
		}
		at += n;
	}
	return mfd;
}

/*
 * Load the patch object named ``path`` (for messages, status and telling objects
 * apart) from ``fd`` when the client sent one (the file as the client sees it,
 * whatever this process's filesystem is), else from ``path``.
 */
static struct patch *load(const char *path, int fd, struct klp_outcome *out)
{
	struct patch *p;
	struct link_map *lm;
	const char *err;
	char via[64];
	const char *src = path;

	p = calloc(1, sizeof(*p));
	if (!p || !(p->path = strdup(path))) {
		free(p);
		fail(out, "internal", "out of memory");
		return NULL;
	}
	p->fd = -1;
	if (fd >= 0 ? fstat(fd, &p->st) : stat(path, &p->st)) {
		fail(out, "read", "%s: %s", path, strerror(errno));
		goto drop;
	}
	if (!S_ISREG(p->st.st_mode)) {
		fail(out, "read", "%s: not a regular file", path);
		goto drop;
	}
	if (fd >= 0) {
		/* A copy of its own, held while the object is loaded: nobody can change the
		 * code under it, it is a new file to the loader each time (which knows objects
		 * by name and by file), and no two loaded patches share a /proc/self/fd name. */
		p->fd = copy_object(fd, p->st.st_size, path, out);
		if (p->fd < 0)
			goto drop;
		/* The loader names the object after this path: /proc/<pid>, not /proc/self,
		 * so that a debugger reading the name opens our descriptor, not its own. */
		snprintf(via, sizeof(via), "/proc/%d/fd/%d", (int)getpid(), p->fd);
		src = via;
		if (access(via, R_OK)) {
			fail(out, "read", "%s: cannot be loaded from a descriptor (%s: %s): this process "
			     "has no /proc", path, via, strerror(errno));
			goto drop;
		}
	}
	if (check_file(src, path, p->st.st_size, out))
		goto drop;
	for (struct patch *q = loaded; q; q = q->next)
		if (!strcmp(q->path, path) &&
		    (q->st.st_dev != p->st.st_dev || q->st.st_ino != p->st.st_ino ||
		     q->st.st_size != p->st.st_size ||
		     q->st.st_mtim.tv_sec != p->st.st_mtim.tv_sec ||
		     q->st.st_mtim.tv_nsec != p->st.st_mtim.tv_nsec)) {
			fail(out, "read",
			     "%s changed since it was loaded as %s, which is still loaded: "
			     "apply the new object from another path",
			     path, q->desc->name);
			goto drop;
		}
	dlerror();
	p->handle = klp_real_dlopen(src, RTLD_NOW | RTLD_LOCAL);
	if (!p->handle) {
		err = dlerror();
		fail(out, "read", "%s", err ? err : "dlopen failed");
		goto drop;
	}
	for (struct patch *q = loaded; q; q = q->next)
		if (fd >= 0 && q->handle == p->handle) {
			fail(out, "internal", "%s: the loader answered with %s, loaded before", path,
			     q->desc->name);
			goto drop;
		}
	if (dlinfo(p->handle, RTLD_DI_LINKMAP, &lm) ||
	    klp_object_map(lm->l_addr, lm->l_name, &p->map)) {
		fail(out, "internal", "%s: cannot find the loaded object", path);
		goto drop;
	}
	p->desc = dlsym(p->handle, KLPCC_DESCRIPTOR);
	if (!p->desc || !klp_object_holds(&p->map, (uintptr_t)p->desc,
					  (uintptr_t)(p->desc + 1), PROT_READ)) {
		fail(out, "descriptor", "%s: no %s in the object", path, KLPCC_DESCRIPTOR);
		goto drop;
	}
	if (check_descriptor(p, out))
		goto drop;
	return p;
drop:
	free_patch(p);
	return NULL;
}

/* The code of a replacement: its symbol's st_size, or the whole segment holding it. */
static void copy_range(const struct patch *p, struct pfunc *pf)
{
	const ElfW(Sym) *sym = NULL;
	uintptr_t fn = (uintptr_t)pf->f->new_func;
	Dl_info info;

	if (dladdr1(pf->f->new_func, &info, (void **)&sym, RTLD_DL_SYMENT) && sym &&
	    (uintptr_t)info.dli_saddr == fn && sym->st_size) {
		pf->copy_lo = fn;
		pf->copy_hi = fn + sym->st_size;
		return;
	}
	for (int i = 0; i < p->map.nseg; i++)
		if (fn >= p->map.seg[i].lo && fn < p->map.seg[i].hi) {
			pf->copy_lo = p->map.seg[i].lo;
			pf->copy_hi = p->map.seg[i].hi;
		}
}

/* Match the functions and refs of object k, loaded as m: sites for the functions (their
 * entries checked), the refs' addresses checked and stored.  -1 and why in err. */
static int attach_object(struct patch *p, unsigned k, const struct klp_module *m, char *err,
			 size_t errlen)
{
	const struct klpcc_patch *d = p->desc;

	for (unsigned i = 0; i < d->nrefs; i++) {
		const struct klpcc_ref *r = &d->refs[i];
		uintptr_t addr = m->bias + r->offset;

		if (r->object == k && (addr < m->bias || !klp_module_holds(m, addr, addr + 1))) {
			snprintf(err, errlen, "ref %s: offset %#lx is outside %s", r->name, r->offset,
				 d->objects[k].name);
			return -1;
		}
	}
	for (unsigned i = 0; i < p->nfuncs; i++) {
		struct pfunc *pf = &p->funcs[i];
		uintptr_t entry = m->bias + pf->f->offset;

		if (pf->f->object != k)
			continue;
		for (unsigned n = 0; n < i; n++)
			if (p->funcs[n].f->object == k && p->funcs[n].f->offset == pf->f->offset) {
				snprintf(err, errlen, "%s: listed twice (as %s)", pf->f->name,
					 p->funcs[n].f->name);
				goto undo;
			}
		if (pf->f->size < KLPCC_ENTRY_BYTES || entry < m->bias) {
			snprintf(err, errlen, "%s: offset %#lx size %lu is outside the text of %s",
				 pf->f->name, pf->f->offset, pf->f->size, d->objects[k].name);
			goto undo;
		}
		pf->site = klp_site_lookup(m, entry, pf->f->size, pf->f->name, err, errlen);
		if (!pf->site)
			goto undo;
	}
	for (unsigned i = 0; i < d->nrefs; i++)
		if (d->refs[i].object == k)
			*d->refs[i].slot = (void *)(m->bias + d->refs[i].offset);
	p->objs[k].mod = *m;
	p->objs[k].loaded = 1;
	return 0;
undo:
	for (unsigned i = 0; i < p->nfuncs; i++)
		if (p->funcs[i].f->object == k)
			p->funcs[i].site = NULL; /* a site made here holds its NOPs: harmless */
	return -1;
}

static int resolve(struct patch *p, struct klp_outcome *out)
{
	const struct klpcc_patch *d = p->desc;
	char err[256];

	p->funcs = calloc(d->nfuncs ? d->nfuncs : 1, sizeof(*p->funcs));
	p->objs = calloc(d->nobjects, sizeof(*p->objs));
	if (!p->funcs || !p->objs)
		return fail(out, "internal", "out of memory");
	p->nfuncs = d->nfuncs;
	p->nobjs = d->nobjects;
	for (unsigned i = 0; i < d->nfuncs; i++) {
		p->funcs[i].f = &d->funcs[i];
		copy_range(p, &p->funcs[i]);
		p->has_immediate |= !!d->funcs[i].immediate;
	}
	for (unsigned k = 0; k < d->nobjects; k++) {
		const struct klpcc_object *o = &d->objects[k];
		struct klp_module m;

		p->objs[k].o = o;
		if (!o->library && strcasecmp(o->build_id, klp_prog.main.build_id))
			return fail(out, "build-id", "%s was built for %s, build-id %s; this program is %s",
				    d->name, o->name, o->build_id,
				    klp_prog.main.build_id[0] ? klp_prog.main.build_id : "without one");
		/* held (then found again) while the transaction writes into it */
		if (klp_module_find(o->build_id, &m) || hold(&m) || klp_module_find(o->build_id, &m))
			continue; /* a library not loaded (yet): its functions wait for it */
		if (attach_object(p, k, &m, err, sizeof(err)))
			return fail(out, "symbol", "%s", err);
	}
	return 0;
}

/* Whether two patches change an object in common. */
static int overlap(const struct patch *a, const struct patch *b)
{
	for (unsigned i = 0; i < a->nobjs; i++)
		for (unsigned k = 0; k < b->nobjs; k++)
			if (!strcmp(a->objs[i].o->build_id, b->objs[k].o->build_id))
				return 1;
	return 0;
}

/* The installed patch `p` replaces: the one changing an object of p (NULL: none). */
static int replaced_by(const struct patch *p, struct patch **prev, struct klp_outcome *out)
{
	unsigned n = 0;

	*prev = NULL;
	for (struct patch *q = loaded; q; q = q->next) {
		if (!q->installed)
			continue;
		n++;
		if (!overlap(p, q))
			continue;
		if (*prev)
			return fail(out, "request", "%s changes objects of two installed patches, %s and "
				    "%s: disable one of them first", p->desc->name, (*prev)->desc->name,
				    q->desc->name);
		*prev = q;
	}
	if (!*prev && n >= KLP_MAX_INSTALLED)
		return fail(out, "request", "%u patches are installed, the most the runtime holds", n);
	/* klpcc_get_state answers from every patch installed: one id, one owner. */
	for (struct patch *q = loaded; q; q = q->next)
		for (unsigned i = 0; q->installed && q != *prev && i < p->desc->nstates; i++)
			if (klp_states_find(q->states, p->desc->states[i].id))
				return fail(out, "state", "%s declares state %lu, which %s (installed beside "
					    "it, for other objects) declares too", p->desc->name,
					    p->desc->states[i].id, q->desc->name);
	return 0;
}

/* The new patch must keep every state of the installed one at the same version or later;
 * a state kept carries its data over. */
static int take_states(struct patch *p, const struct patch *prev, struct klp_outcome *out)
{
	const struct klpcc_patch *d = p->desc;
	char err[sizeof(out->error)];

	if (prev && !klp_is_patch_compatible(d, prev->states, prev->desc->name, err, sizeof(err)))
		return fail(out, "state", "%s", err);
	p->states = calloc(1, sizeof(*p->states));
	if (!p->states || !(p->states->v = calloc(d->nstates ? d->nstates : 1, sizeof(*p->states->v))))
		return fail(out, "internal", "out of memory");
	p->states->n = d->nstates;
	for (unsigned i = 0; i < d->nstates; i++) {
		struct klpcc_state *old = prev ? klp_states_find(prev->states, d->states[i].id) : NULL;

		p->states->v[i] = (struct klpcc_state){ d->states[i].id, d->states[i].version,
							old ? old->data : NULL };
	}
	return 0;
}

enum callback { PRE_PATCH, POST_PATCH, PRE_UNPATCH, POST_UNPATCH };

/* Run one of the patch's callbacks, if it has it, with klpcc_get_state answering from
 * the patch and klpcc_get_prev_state from `prev` (the patch it replaces, or NULL).
 * Returns what pre_patch returned, otherwise 0. */
static int run_callback(const struct patch *p, const struct patch *prev, enum callback kind)
{
	const struct klpcc_patch *d = p->desc;
	int rc = 0;

	klp_state_set_context(p->states, prev ? prev->states : NULL);
	switch (kind) {
	case PRE_PATCH:
		if (d->pre_patch)
			rc = d->pre_patch();
		break;
	case POST_PATCH:
		if (d->post_patch)
			d->post_patch();
		break;
	case PRE_UNPATCH:
		if (d->pre_unpatch)
			d->pre_unpatch();
		break;
	case POST_UNPATCH:
		if (d->post_unpatch)
			d->post_unpatch();
		break;
	}
	klp_state_set_context(NULL, NULL);
	return rc;
}

/* ---- the switch ---------------------------------------------------------------------------- */

struct plan {
	struct klp_write *writes;
	size_t nwrites;
	struct klp_busy_range *busy;
	size_t nbusy;
	uintptr_t *entries;
	/* objects that may be unloaded after the switch */
	struct patch **watched;
	size_t nwatched;
	struct klp_range *watch;
	int *watch_group;
	size_t nwatch;
	unsigned char *hit;
};

static void plan_free(struct plan *pl)
{
	free(pl->writes);
	free(pl->busy);
	free(pl->entries);
	free(pl->watched);
	free(pl->watch);
	free(pl->watch_group);
	free(pl->hit);
}

static void add_busy(struct plan *pl, uintptr_t lo, uintptr_t hi, const struct klpcc_func *f,
		     const char *what, const char *why)
{
	if (lo < hi)
		pl->busy[pl->nbusy++] = (struct klp_busy_range){ lo, hi, f->name, what, why };
}

static const struct pfunc *func_at(const struct patch *p, const struct klp_site *site)
{
	for (unsigned i = 0; p && site && i < p->nfuncs; i++)
		if (p->funcs[i].site == site)
			return &p->funcs[i];
	return NULL;
}

static int cmp_uintptr(const void *a, const void *b)
{
	uintptr_t x = *(const uintptr_t *)a, y = *(const uintptr_t *)b;

	return x < y ? -1 : x > y;
}

/* Writes for `next` (NULL: back to the originals) replacing `prev`. */
static int plan_switch(struct plan *pl, const struct patch *next, const struct patch *prev,
		       struct klp_json *nops, struct klp_outcome *out)
{
	size_t max = (next ? next->nfuncs : 0) + (prev ? prev->nfuncs : 0) + 1;
	char err[256];

	pl->writes = calloc(max, sizeof(*pl->writes));
	pl->busy = calloc(3 * max, sizeof(*pl->busy));
	pl->entries = calloc(max, sizeof(*pl->entries));
	if (!pl->writes || !pl->busy || !pl->entries)
		return fail(out, "internal", "out of memory");
	for (unsigned i = 0; next && i < next->nfuncs; i++) {
		const struct pfunc *pf = &next->funcs[i], *old;
		struct klp_write *w;

		if (!pf->site)
			continue; /* its object is not loaded */
		old = func_at(prev, pf->site);
		w = &pl->writes[pl->nwrites++];

		if (klp_write_prepare(w, pf->site, (uintptr_t)pf->f->new_func, err, sizeof(err)))
			return fail(out, "internal", "%s", err);
		w->owner = next;
		w->owner_name = next->desc->name;
		if (pf->f->immediate)
			continue;
		add_busy(pl, pf->site->entry, pf->site->entry + pf->site->size, pf->f,
			 "the original", pf->f->why);
		if (old)
			add_busy(pl, old->copy_lo, old->copy_hi, pf->f, "the installed copy", pf->f->why);
		add_busy(pl, pf->copy_lo, pf->copy_hi, pf->f, "the new copy", pf->f->why);
	}
	for (unsigned i = 0; prev && i < prev->nfuncs; i++) {
		const struct pfunc *old = &prev->funcs[i];
		struct klp_write *w;

		if (!old->site || func_at(next, old->site))
			continue;
		w = &pl->writes[pl->nwrites++];
		if (klp_write_prepare(w, old->site, 0, err, sizeof(err)))
			return fail(out, "internal", "%s", err);
		list_add(nops, old->site->name);
		if (old->f->immediate)
			continue;
		add_busy(pl, old->site->entry, old->site->entry + old->site->size, old->f,
			 "the original", "reverted to the original (a nop)");
		add_busy(pl, old->copy_lo, old->copy_hi, old->f, "the installed copy",
			 "reverted to the original (a nop)");
	}
	for (size_t i = 0; i < pl->nwrites; i++) {
		const struct klp_site *site = pl->writes[i].site;

		if (memcmp((const void *)site->entry, site->cur, KLPCC_ENTRY_BYTES))
			return fail(out, "symbol", "%s: its entry holds bytes the runtime did not write "
				    "(a breakpoint?)", site->name);
		pl->entries[i] = site->entry;
	}
	qsort(pl->entries, pl->nwrites, sizeof(*pl->entries), cmp_uintptr);
	return 0;
}

/* Whether a loaded patch other than `keep` may go after a switch that takes `gone` out of
 * force: a replaced one, or `gone` (another patch installed for other objects stays). */
static int may_go(const struct patch *p, const struct patch *keep, const struct patch *gone)
{
	return p != keep && (!p->installed || p == gone);
}

/* Those patches may be unloaded if no frame lies in them at the final stop. */
static int plan_watch(struct plan *pl, const struct patch *keep, const struct patch *gone,
		      struct klp_outcome *out)
{
	size_t np = 0, nr = 0;

	for (struct patch *p = loaded; p; p = p->next)
		if (may_go(p, keep, gone)) {
			np++;
			nr += p->map.nseg;
		}
	pl->watched = calloc(np + 1, sizeof(*pl->watched));
	pl->watch = calloc(nr + 1, sizeof(*pl->watch));
	pl->watch_group = calloc(nr + 1, sizeof(*pl->watch_group));
	pl->hit = calloc(np + 1, 1);
	if (!pl->watched || !pl->watch || !pl->watch_group || !pl->hit)
		return fail(out, "internal", "out of memory");
	for (struct patch *p = loaded; p; p = p->next) {
		if (!may_go(p, keep, gone))
			continue;
		for (int s = 0; s < p->map.nseg; s++) {
			pl->watch[pl->nwatch] = p->map.seg[s];
			pl->watch_group[pl->nwatch++] = (int)pl->nwatched;
		}
		pl->watched[pl->nwatched++] = p;
	}
	return 0;
}

/* What the switch writes, and the patch that comes into force (`in`, apply) or goes out
 * of it (`out`, disable and the patch an apply replaces).  The records change in the
 * same stop as the code: a process forked at any time (a fork cannot happen while
 * every other thread is stopped) has code and records that agree. */
struct commit_arg {
	struct klp_write *writes;
	size_t n;
	struct patch *in, *out;
};

static void commit(void *arg)
{
	struct commit_arg *c = arg;

	klp_writes_commit(c->writes, c->n);
	if (c->in) {
		c->in->next = loaded;
		loaded = c->in;
		c->in->installed = 1;
	}
	if (c->out)
		c->out->installed = 0;
	if (c->in || c->out) /* klpcc_get_state answers from the patches in force */
		klp_state_install(c->in ? c->in->states : NULL, c->out ? c->out->states : NULL);
}

static int switch_functions(struct plan *pl, unsigned long timeout_ms, struct klp_outcome *out,
			    struct patch *in, struct patch *gone)
{
	struct commit_arg c = { pl->writes, pl->nwrites, in, gone };
	struct klp_transition t = {
		.busy = pl->busy, .nbusy = pl->nbusy,
		.entries = pl->entries, .nentries = pl->nwrites,
		.watch = pl->watch, .watch_group = pl->watch_group, .nwatch = pl->nwatch,
		.watch_hit = pl->hit,
		.commit = commit, .commit_arg = &c,
		.deadline_us = klp_now_us() + (uint64_t)timeout_ms * 1000,
	};
	char err[256];
	int rc;

	if (klp_writes_unprotect(pl->writes, pl->nwrites, err, sizeof(err)))
		return fail(out, "internal", "%s", err);
	rc = klp_transition_run(&t);
	klp_writes_protect(pl->writes, pl->nwrites);
	out->tries = t.tries;
	out->parked = t.parked;
	out->stopped_us = t.stopped_us;
	if (rc)
		return fail(out, rc == -1 ? "stack" : "internal", "%s", t.error);
	return 0;
}

static void unlink_patch(struct patch *p)
{
	for (struct patch **q = &loaded; *q; q = &(*q)->next)
		if (*q == p) {
			*q = p->next;
			return;
		}
}

/* After a switch: unload the patches no thread can run any more.  The patch just
 * replaced stays loaded if it has immediate functions (a thread may be inside one);
 * one replaced earlier goes once a final stop finds no frame in it.  A record sharing
 * the new patch's object (the same file applied again) only drops its reference. */
static void unload_unused(struct plan *pl, const struct patch *kept, const struct patch *replaced,
			  struct klp_outcome *out)
{
	for (size_t i = 0; i < pl->nwatched; i++) {
		struct patch *p = pl->watched[i];
		int same_object = kept && p->handle == kept->handle;

		if (!same_object && (pl->hit[i] || (p == replaced && p->has_immediate)))
			continue;
		if (!same_object)
			list_add(&out->unloaded, p->desc->name);
		unlink_patch(p);
		free_patch(p);
	}
}

/* ---- apply, disable, status ------------------------------------------------------------------ */

static void apply_pinned(const char *path, int fd, unsigned long timeout_ms, struct klp_outcome *out);
static void disable_pinned(const char *name, unsigned long timeout_ms, struct klp_outcome *out);
static void pin(struct pins *pins);
static void unpin(struct pins *pins);

void klp_apply(const char *path, int fd, unsigned long timeout_ms, struct klp_outcome *out)
{
	struct pins pins;

	pin(&pins);
	apply_pinned(path, fd, timeout_ms, out);
	unpin(&pins);
	/* Libraries loaded unseen meanwhile (by the C library itself, in a dlmopen
	 * namespace) get the installed patches' code now. */
	klp_objects_sync(timeout_ms);
}

void klp_disable(const char *name, unsigned long timeout_ms, struct klp_outcome *out)
{
	struct pins pins;

	pin(&pins);
	disable_pinned(name, timeout_ms, out);
	unpin(&pins);
	klp_objects_sync(timeout_ms);
}

static void apply_pinned(const char *path, int fd, unsigned long timeout_ms, struct klp_outcome *out)
{
	uint64_t start = klp_now_us();
	struct patch *p, *prev;
	struct plan pl = { 0 };
	int rc;

	p = load(path, fd, out);
	if (!p)
		return;
	if (resolve(p, out) || replaced_by(p, &prev, out))
		goto drop;
	if (take_states(p, prev, out))
		goto drop;
	if (plan_switch(&pl, p, prev, &out->nops, out) || plan_watch(&pl, p, prev, out))
		goto drop;
	rc = run_callback(p, prev, PRE_PATCH);
	if (rc) {
		fail(out, "pre_patch", "%s: pre_patch returned %d", p->desc->name, rc);
		goto drop;
	}
	if (switch_functions(&pl, timeout_ms, out, p, prev)) {
		/* As the kernel does for a transition reversed: post_unpatch undoes pre_patch. */
		run_callback(p, prev, POST_UNPATCH);
		goto drop;
	}
	/* p is in force (switch_functions' commit): klpcc_get_state answers from it. */
	run_callback(p, prev, POST_PATCH);
	if (prev)
		list_add(&out->replaced, prev->desc->name);
	for (unsigned i = 0; i < p->nfuncs; i++)
		if (!p->funcs[i].site)
			list_add(&out->pending, p->funcs[i].f->name);
	unload_unused(&pl, p, prev, out);
	applies++;
	out->patch = strdup(p->desc->name);
	plan_free(&pl);
	out->total_us = klp_now_us() - start;
	return;
drop:
	plan_free(&pl);
	free_patch(p);
}

/* The installed patch called `name`, or the only one installed when name is NULL. */
static struct patch *installed_named(const char *name, struct klp_outcome *out)
{
	struct patch *found = NULL;
	struct klp_json names = { 0 };
	unsigned n = 0;

	for (struct patch *q = loaded; q; q = q->next) {
		if (!q->installed)
			continue;
		n++;
		list_add(&names, q->desc->name);
		if (!name || !strcmp(q->desc->name, name))
			found = q;
	}
	if (!n)
		fail(out, "request", "no patch is installed");
	else if (name && !found)
		fail(out, "request", "no installed patch is called %s (installed: %s)", name,
		     names.failed ? "?" : names.buf);
	else if (!name && n > 1)
		fail(out, "request", "%u patches are installed (%s): name the one to disable", n,
		     names.failed ? "?" : names.buf);
	klp_json_free(&names);
	return out->step ? NULL : found;
}

static void disable_pinned(const char *name, unsigned long timeout_ms, struct klp_outcome *out)
{
	uint64_t start = klp_now_us();
	struct patch *p = installed_named(name, out);
	struct plan pl = { 0 };

	if (!p)
		return;
	if (plan_switch(&pl, NULL, p, &out->nops, out) || plan_watch(&pl, NULL, p, out))
		goto out;
	run_callback(p, NULL, PRE_UNPATCH);
	if (switch_functions(&pl, timeout_ms, out, NULL, p)) {
		/* As the kernel does for a disable reversed: post_patch undoes pre_unpatch. */
		run_callback(p, NULL, POST_PATCH);
		goto out;
	}
	run_callback(p, NULL, POST_UNPATCH);
	out->patch = strdup(p->desc->name);
	unload_unused(&pl, NULL, p, out);
	out->total_us = klp_now_us() - start;
out:
	plan_free(&pl);
}

/* ---- objects that come and go ---------------------------------------------------------------- */

/* Where object k of p is loaded now, at the same place as when it was attached, with its
 * entries not fresh (a library unloaded and loaded again at the same place has its NOPs
 * back): 1; gone, moved or reloaded: 0.  An entry holding something else (a debugger's
 * breakpoint) is not the object's going. */
static int still_there(const struct patch *p, unsigned k)
{
	static const unsigned char nops[KLPCC_ENTRY_BYTES] = { 0x90, 0x90, 0x90, 0x90, 0x90 };
	struct klp_module m;

	if (klp_module_find(p->objs[k].o->build_id, &m) || m.bias != p->objs[k].mod.bias)
		return 0;
	for (unsigned i = 0; i < p->nfuncs; i++) {
		const struct pfunc *pf = &p->funcs[i];

		if (pf->f->object == k && pf->site && !memcmp((const void *)pf->site->entry, nops,
							      KLPCC_ENTRY_BYTES) &&
		    memcmp(pf->site->cur, nops, KLPCC_ENTRY_BYTES))
			return 0;
	}
	return 1;
}

static void unref_site(struct klp_site *site)
{
	for (struct patch *q = loaded; q; q = q->next)
		for (unsigned n = 0; n < q->nfuncs; n++)
			if (q->funcs[n].site == site)
				q->funcs[n].site = NULL;
}

/* Object k of p went away: every site in it is forgotten (every patch's, applied or
 * not), and every patch's functions there wait for it again. */
static void detach_object(struct patch *p, unsigned k)
{
	const struct klp_module *m = &p->objs[k].mod;

	for (int s = 0; s < m->nload; s++)
		klp_sites_forget_range(m->load[s].lo, m->load[s].hi, unref_site);
	for (struct patch *q = loaded; q; q = q->next)
		for (unsigned n = 0; n < q->nobjs; n++)
			if (!strcmp(q->objs[n].o->build_id, p->objs[k].o->build_id))
				q->objs[n].loaded = 0;
}

/* Object k of the installed patch p was loaded: switch its functions to p's code. */
static void arrive(struct patch *p, unsigned k, const struct klp_module *m, unsigned long timeout_ms)
{
	struct klp_outcome out = { 0 };
	struct plan pl = { 0 };
	size_t max = p->nfuncs + 1;
	char err[256];

	if (attach_object(p, k, m, err, sizeof(err))) {
		fail(&out, "symbol", "%s", err);
		goto failed;
	}
	pl.writes = calloc(max, sizeof(*pl.writes));
	pl.busy = calloc(2 * max, sizeof(*pl.busy));
	pl.entries = calloc(max, sizeof(*pl.entries));
	if (!pl.writes || !pl.busy || !pl.entries) {
		fail(&out, "internal", "out of memory");
		goto undo;
	}
	for (unsigned i = 0; i < p->nfuncs; i++) {
		const struct pfunc *pf = &p->funcs[i];
		struct klp_write *w;

		if (pf->f->object != k || !pf->site)
			continue;
		w = &pl.writes[pl.nwrites++];
		if (klp_write_prepare(w, pf->site, (uintptr_t)pf->f->new_func, err, sizeof(err))) {
			fail(&out, "internal", "%s", err);
			goto undo;
		}
		w->owner = p;
		w->owner_name = p->desc->name;
		if (!pf->f->immediate)
			add_busy(&pl, pf->site->entry, pf->site->entry + pf->site->size, pf->f,
				 "the original", pf->f->why);
	}
	for (size_t i = 0; i < pl.nwrites; i++)
		pl.entries[i] = pl.writes[i].site->entry;
	qsort(pl.entries, pl.nwrites, sizeof(*pl.entries), cmp_uintptr);
	if (!switch_functions(&pl, timeout_ms, &out, NULL, NULL)) {
		plan_free(&pl);
		return;
	}
undo:
	for (unsigned i = 0; i < p->nfuncs; i++)
		if (p->funcs[i].f->object == k)
			p->funcs[i].site = NULL;
	p->objs[k].loaded = 0;
	plan_free(&pl);
failed:
	/* Not again while it stays loaded there: every dlopen would wait for it. */
	p->objs[k].failed_bias = m->bias;
	snprintf(p->objs[k].error, sizeof(p->objs[k].error), "%s: %s", out.step, out.error);
	klp_log("%s: cannot patch %s as it loads (%s): %s", p->desc->name, m->path, out.step,
		out.error);
}

void klp_objects_sync(unsigned long timeout_ms)
{
	for (struct patch *p = loaded; p; p = p->next)
		for (unsigned k = 0; k < p->nobjs; k++)
			if (p->objs[k].loaded && !still_there(p, k))
				detach_object(p, k);
	for (struct patch *p = loaded; p; p = p->next)
		for (unsigned k = 0; p->installed && k < p->nobjs; k++) {
			struct pobj *o = &p->objs[k];
			struct klp_module m;
			struct pins pins = { 0 };
			struct pins *outer = held;

			if (o->loaded)
				continue;
			if (klp_module_find(o->o->build_id, &m) || m.bias != o->failed_bias)
				o->failed_bias = 0, o->error[0] = 0; /* gone, or loaded elsewhere */
			if (klp_module_find(o->o->build_id, &m) || (o->error[0] && o->failed_bias == m.bias))
				continue;
			/* Held while it is patched: nobody unloads it under the writes. */
			held = &pins;
			if (!hold(&m) && !klp_module_find(o->o->build_id, &m))
				arrive(p, k, &m, timeout_ms);
			unpin(&pins);
			held = outer;
		}
}

int klp_covered(const char *build_id)
{
	for (const struct patch *p = loaded; p; p = p->next)
		for (unsigned k = 0; p->installed && k < p->nobjs; k++)
			if (!strcasecmp(p->objs[k].o->build_id, build_id))
				return 1;
	return 0;
}

/* The libraries the loaded patches are attached to, held (dlopen RTLD_NOLOAD) while a
 * transaction writes their entries (and those resolve() attaches); objects that went
 * before they could be held are detached.  The holds are given back with unpin(). */
static void pin(struct pins *pins)
{
	memset(pins, 0, sizeof(*pins));
	held = pins;
	for (struct patch *p = loaded; p; p = p->next)
		for (unsigned k = 0; k < p->nobjs; k++)
			if (p->objs[k].loaded)
				hold(&p->objs[k].mod);
	for (struct patch *p = loaded; p; p = p->next)
		for (unsigned k = 0; k < p->nobjs; k++)
			if (p->objs[k].loaded && !still_there(p, k))
				detach_object(p, k);
}

static void unpin(struct pins *pins)
{
	held = NULL;
	for (size_t i = 0; i < pins->n; i++)
		klp_real_dlclose(pins->v[i]);
	free(pins->v);
}

/* ---- status ---------------------------------------------------------------------------------- */

static const char *object_name(const struct patch *p, unsigned k)
{
	return p->objs[k].o->name;
}

static void status_patch(struct klp_json *j, const struct patch *p)
{
	klp_json_raw(j, "{\"name\":");
	klp_json_str(j, p->desc->name);
	klp_json_raw(j, ",\"path\":");
	klp_json_str(j, p->path);
	klp_json_fmt(j, ",\"state\":\"%s\",\"objects\":[", p->installed ? "installed" : "replaced");
	for (unsigned k = 0; k < p->nobjs; k++) {
		klp_json_raw(j, k ? ",{\"name\":" : "{\"name\":");
		klp_json_str(j, object_name(p, k));
		klp_json_raw(j, ",\"build_id\":");
		klp_json_str(j, p->objs[k].o->build_id);
		klp_json_fmt(j, ",\"loaded\":%s", p->objs[k].loaded ? "true" : "false");
		if (p->objs[k].error[0]) {
			klp_json_raw(j, ",\"error\":");
			klp_json_str(j, p->objs[k].error);
		}
		klp_json_raw(j, "}");
	}
	klp_json_raw(j, "],\"functions\":[");
	for (unsigned i = 0; i < p->nfuncs; i++) {
		const struct klpcc_func *f = p->funcs[i].f;

		klp_json_raw(j, i ? ",{\"name\":" : "{\"name\":");
		klp_json_str(j, f->name);
		klp_json_raw(j, ",\"object\":");
		klp_json_str(j, object_name(p, f->object));
		klp_json_fmt(j, ",\"pending\":%s,\"immediate\":%s,\"why\":",
			     p->funcs[i].site ? "false" : "true", f->immediate ? "true" : "false");
		klp_json_str(j, f->why);
		klp_json_raw(j, "}");
	}
	klp_json_raw(j, "],\"states\":[");
	for (unsigned i = 0; i < p->states->n; i++)
		klp_json_fmt(j, "%s{\"id\":%lu,\"version\":%u}", i ? "," : "", p->states->v[i].id,
			     p->states->v[i].version);
	klp_json_raw(j, "]}");
}

struct status_sites {
	struct klp_json *j;
	int n;
};

static void status_site(const struct klp_site *site, void *arg)
{
	struct status_sites *st = arg;

	if (!site->target)
		return;
	klp_json_raw(st->j, st->n++ ? ",{\"name\":" : "{\"name\":");
	klp_json_str(st->j, site->name);
	klp_json_raw(st->j, ",\"patch\":");
	klp_json_str(st->j, site->owner_name);
	klp_json_raw(st->j, "}");
}

void klp_status(struct klp_json *j)
{
	struct status_sites sites = { j, 0 };
	int first = 1;

	klp_json_fmt(j, "{\"ok\":true,\"pid\":%d,\"build_id\":", (int)klp_prog.pid);
	klp_json_str(j, klp_prog.main.build_id);
	klp_json_fmt(j, ",\"applies\":%lu,\"rewound\":%lu,\"patches\":[", applies,
		     klp_transition_rewinds());
	for (int pass = 0; pass < 2; pass++)
		for (const struct patch *p = loaded; p; p = p->next) {
			if (p->installed != !pass)
				continue;
			if (!first)
				klp_json_raw(j, ",");
			status_patch(j, p);
			first = 0;
		}
	klp_json_raw(j, "],\"redirected\":[");
	klp_sites_each(status_site, &sites);
	klp_json_raw(j, "]}");
}
