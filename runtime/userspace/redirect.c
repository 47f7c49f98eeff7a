// SPDX-License-Identifier: MIT
/*
 * redirect.c - the five bytes at a function's entry.  The program is built with
 * -fpatchable-function-entry=5,0, so every function starts with five one-byte NOPs; a
 * redirect replaces them with one instruction, `E9 rel32`.  When the replacement lies
 * within +-2 GB of the entry the jump goes straight there.  Otherwise it goes to a
 * 16-byte slot, `FF 25 00 00 00 00` then the 8-byte absolute target, in a page mapped
 * within +-2 GB of its object's text (the program's or a library's); each function gets
 * its own slot, kept while its object is loaded, whose target is rewritten by later
 * switches (and set back to the original's body, entry + 5, when the function gets its
 * NOPs back).  A library unloaded takes its sites with it (klp_site_forget).
 *
 * Writes are prepared before the world stops (slots allocated, pages made writable)
 * and stored while it is stopped: klp_writes_commit only copies bytes.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "internal.h"

#define SLOT_SIZE 16
#define NEAR ((uintptr_t)1 << 31)
#define SEARCH_STEP ((uintptr_t)1 << 16)

static const unsigned char nops[KLPCC_ENTRY_BYTES] = { 0x90, 0x90, 0x90, 0x90, 0x90 };

static struct klp_site **sites;
static size_t nsites, capsites;

struct slot_page {
	uintptr_t base;
	unsigned used;
};

static struct slot_page *slot_pages;
static size_t nslot_pages;

static uintptr_t page_size(void)
{
	static uintptr_t size;

	if (!size)
		size = (uintptr_t)sysconf(_SC_PAGESIZE);
	return size;
}

struct klp_site *klp_site_find(uintptr_t entry)
{
	for (size_t i = 0; i < nsites; i++)
		if (sites[i]->entry == entry)
			return sites[i];
	return NULL;
}

void klp_sites_each(void (*fn)(const struct klp_site *, void *), void *arg)
{
	for (size_t i = 0; i < nsites; i++)
		fn(sites[i], arg);
}

struct klp_site *klp_site_lookup(const struct klp_module *m, uintptr_t entry, unsigned long size,
				 const char *name, char *err, size_t errlen)
{
	struct klp_site *site = klp_site_find(entry);
	int seg = klp_module_text(m, entry, entry + size);

	if (seg < 0) {
		snprintf(err, errlen, "%s: %#lx size %lu is outside the text of %s", name,
			 (unsigned long)(entry - m->bias), size, m->path[0] ? m->path : "the program");
		return NULL;
	}
	if (site) {
		if (memcmp((const void *)entry, site->cur, KLPCC_ENTRY_BYTES)) {
			snprintf(err, errlen, "%s: its entry holds bytes the runtime did not write",
				 name);
			return NULL;
		}
		return site;
	}
	if (memcmp((const void *)entry, nops, KLPCC_ENTRY_BYTES)) {
		snprintf(err, errlen,
			 "%s: its entry does not hold the five NOPs of "
			 "-fpatchable-function-entry=5,0 (wrong offset, or built without it)",
			 name);
		return NULL;
	}
	if (nsites == capsites) {
		size_t cap = capsites ? 2 * capsites : 64;
		struct klp_site **v = realloc(sites, cap * sizeof(*v));

		if (!v)
			goto oom;
		sites = v;
		capsites = cap;
	}
	site = calloc(1, sizeof(*site));
	if (!site)
		goto oom;
	site->name = strdup(name);
	if (!site->name) {
		free(site);
		goto oom;
	}
	site->entry = entry;
	site->size = size;
	site->prot = m->text_prot[seg];
	site->span = (struct klp_range){ UINTPTR_MAX, 0 };
	for (int i = 0; i < m->nload; i++) {
		if (m->load[i].lo < site->span.lo)
			site->span.lo = m->load[i].lo;
		if (m->load[i].hi > site->span.hi)
			site->span.hi = m->load[i].hi;
	}
	memcpy(site->orig, nops, KLPCC_ENTRY_BYTES);
	memcpy(site->cur, nops, KLPCC_ENTRY_BYTES);
	sites[nsites++] = site;
	return site;
oom:
	snprintf(err, errlen, "out of memory");
	return NULL;
}

void klp_sites_forget_range(uintptr_t lo, uintptr_t hi, void (*unref)(struct klp_site *))
{
	for (size_t i = 0; i < nsites;) {
		struct klp_site *site = sites[i];

		if (site->entry < lo || site->entry >= hi) {
			i++;
			continue;
		}
		unref(site);
		sites[i] = sites[--nsites];
		free(site->name);
		free(site); /* its slot, if any, stays unused */
	}
}

/* Where every entry of the site's object can reach with a rel32: [lo, hi). */
static void reach(const struct klp_site *site, uintptr_t *lo, uintptr_t *hi)
{
	uintptr_t plo = site->span.lo, phi = site->span.hi, margin = (uintptr_t)1 << 20;

	*lo = phi > NEAR - margin ? phi - (NEAR - margin) : page_size();
	if (*lo < (uintptr_t)1 << 16)
		*lo = (uintptr_t)1 << 16;
	*hi = plo + (NEAR - margin) < plo ? UINTPTR_MAX : plo + (NEAR - margin);
}

static int try_map(uintptr_t addr)
{
	void *p = mmap((void *)addr, page_size(), PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);

	if (p == MAP_FAILED)
		return 0;
	if ((uintptr_t)p != addr) { /* a kernel without MAP_FIXED_NOREPLACE took it as a hint */
		munmap(p, page_size());
		return 0;
	}
	return 1;
}

/* A page for slots near the site's object: below it first (the heap grows above). */
static uintptr_t map_slot_page(const struct klp_site *site)
{
	uintptr_t lo, hi, plo = site->span.lo, phi = site->span.hi, a;

	reach(site, &lo, &hi);
	for (a = (plo & ~(SEARCH_STEP - 1)) - SEARCH_STEP; a >= lo && a < plo; a -= SEARCH_STEP)
		if (try_map(a))
			return a;
	for (a = ((phi + SEARCH_STEP - 1) & ~(SEARCH_STEP - 1)) + SEARCH_STEP;
	     a + page_size() <= hi && a > phi; a += SEARCH_STEP)
		if (try_map(a))
			return a;
	return 0;
}

static int new_slot(struct klp_site *site, char *err, size_t errlen)
{
	struct slot_page *pg = NULL;
	unsigned char *s;
	uintptr_t body = site->entry + KLPCC_ENTRY_BYTES, lo, hi;

	reach(site, &lo, &hi);
	for (size_t i = 0; i < nslot_pages && !pg; i++)
		if (slot_pages[i].used < page_size() / SLOT_SIZE && slot_pages[i].base >= lo &&
		    slot_pages[i].base + page_size() <= hi)
			pg = &slot_pages[i];
	if (!pg) {
		struct slot_page *v = realloc(slot_pages, (nslot_pages + 1) * sizeof(*v));
		uintptr_t base;

		if (!v) {
			snprintf(err, errlen, "out of memory");
			return -1;
		}
		slot_pages = v;
		base = map_slot_page(site);
		if (!base) {
			snprintf(err, errlen,
				 "%s: no free page within 2 GB of its object for a jump slot",
				 site->name);
			return -1;
		}
		pg = &slot_pages[nslot_pages++];
		*pg = (struct slot_page){ base, 0 };
	} else if (mprotect((void *)pg->base, page_size(), PROT_READ | PROT_WRITE | PROT_EXEC)) {
		/* Threads may be jumping through the page's other slots right now: it stays
		 * executable while the new slot is written. */
		snprintf(err, errlen, "mprotect: %s", strerror(errno));
		return -1;
	}
	s = (unsigned char *)(pg->base + pg->used++ * SLOT_SIZE);
	/* jmp *0(%rip), the target right after it (for now the original's body), int3s. */
	memcpy(s, "\xff\x25\x00\x00\x00\x00", 6);
	memcpy(s + 6, &body, sizeof(body));
	memcpy(s + 14, "\xcc\xcc", 2);
	site->slot = (uintptr_t)s;
	if (mprotect((void *)pg->base, page_size(), PROT_READ | PROT_EXEC)) {
		snprintf(err, errlen, "mprotect: %s", strerror(errno));
		return -1;
	}
	return 0;
}

static int rel32(uintptr_t from, uintptr_t to, int32_t *rel)
{
	intptr_t d = (intptr_t)(to - from);

	if (d < INT32_MIN || d > INT32_MAX)
		return -1;
	*rel = (int32_t)d;
	return 0;
}

int klp_write_prepare(struct klp_write *w, struct klp_site *site, uintptr_t target, char *err,
		      size_t errlen)
{
	uintptr_t next = site->entry + KLPCC_ENTRY_BYTES;
	int32_t rel;

	w->site = site;
	w->target = target;
	if (!target) {
		memcpy(w->bytes, site->orig, KLPCC_ENTRY_BYTES);
		w->slot_target = next;
		return 0;
	}
	w->slot_target = target;
	if (rel32(next, target, &rel)) {
		if (!site->slot && new_slot(site, err, errlen))
			return -1;
		if (rel32(next, site->slot, &rel)) {
			snprintf(err, errlen, "%s: its jump slot is out of reach", site->name);
			return -1;
		}
	}
	w->bytes[0] = 0xe9;
	memcpy(w->bytes + 1, &rel, sizeof(rel));
	return 0;
}

/* Every page a write touches, with the protection it gets back: the entry's (two if the
 * five bytes straddle) and its slot's. */
static size_t pages_of(const struct klp_write *w, uintptr_t out[3], int prot[3])
{
	uintptr_t mask = ~(page_size() - 1), e = w->site->entry;
	size_t n = 0;

	prot[n] = w->site->prot;
	out[n++] = e & mask;
	if (((e + KLPCC_ENTRY_BYTES - 1) & mask) != out[0]) {
		prot[n] = w->site->prot;
		out[n++] = (e + KLPCC_ENTRY_BYTES - 1) & mask;
	}
	if (w->site->slot) {
		prot[n] = PROT_READ | PROT_EXEC;
		out[n++] = w->site->slot & mask;
	}
	return n;
}

static int set_prot(const struct klp_write *w, size_t n, int writable, char *err, size_t errlen)
{
	int rc = 0;

	for (size_t i = 0; i < n; i++) {
		uintptr_t pages[3];
		int back[3];
		size_t np = pages_of(&w[i], pages, back);

		for (size_t k = 0; k < np; k++) {
			int prot = writable ? PROT_READ | PROT_WRITE | PROT_EXEC : back[k];

			if (mprotect((void *)pages[k], page_size(), prot) && !rc) {
				rc = -1;
				if (err)
					snprintf(err, errlen, "mprotect %#lx: %s",
						 (unsigned long)pages[k], strerror(errno));
			}
		}
	}
	return rc;
}

int klp_writes_unprotect(const struct klp_write *w, size_t n, char *err, size_t errlen)
{
	if (set_prot(w, n, 1, err, errlen)) {
		set_prot(w, n, 0, NULL, 0);
		return -1;
	}
	return 0;
}

void klp_writes_protect(const struct klp_write *w, size_t n)
{
	set_prot(w, n, 0, NULL, 0);
}

void klp_writes_commit(struct klp_write *w, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		struct klp_site *site = w[i].site;

		if (site->slot)
			memcpy((void *)(site->slot + 6), &w[i].slot_target, sizeof(uintptr_t));
		memcpy((void *)site->entry, w[i].bytes, KLPCC_ENTRY_BYTES);
		memcpy(site->cur, w[i].bytes, KLPCC_ENTRY_BYTES);
		site->target = w[i].target;
		site->owner = w[i].owner;
		site->owner_name = w[i].owner_name;
	}
}
