// SPDX-License-Identifier: MIT
/*
 * hooks.c - dlopen and dlclose.  The runtime defines both, so the program's calls (and
 * its libraries') come here first: the dynamic linker does the work, then the control
 * thread looks at what came or went before the caller gets the handle back -- a library
 * an installed patch changes is patched before the caller can run its code (its ELF
 * constructors, run by the loader, run the original), one unloaded takes its redirects
 * with it.  A dlopen nested in a library's constructor waits for the outermost one.
 * Libraries the C library loads for itself (NSS modules, iconv) and dlmopen namespaces
 * are not seen.
 *
 * The dynamic linker searches a name without a slash, and expands $ORIGIN, as its
 * caller sees them (the caller's DT_RUNPATH or DT_RPATH, its directory): here the caller
 * would be this library, so the name is resolved for the real caller first, in the
 * directories the loader itself lists for it (dlinfo RTLD_DI_SERINFO).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <elf.h>
#include <fcntl.h>
#include <limits.h>
#include <link.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <unistd.h>

#include "internal.h"

typedef void *(*dlopen_fn)(const char *, int);
typedef int (*dlclose_fn)(void *);

static __thread int depth;

void *klp_real_dlopen(const char *file, int mode)
{
	static dlopen_fn real;

	if (!real)
		real = (dlopen_fn)dlsym(RTLD_NEXT, "dlopen");
	return real ? real(file, mode) : NULL;
}

int klp_real_dlclose(void *handle)
{
	static dlclose_fn real;

	if (!real)
		real = (dlclose_fn)dlsym(RTLD_NEXT, "dlclose");
	return real ? real(handle) : -1;
}

/* `in` with $ORIGIN and ${ORIGIN} replaced by `dir`; -1 if it does not fit. */
static int expand(const char *in, const char *dir, char *out, size_t len)
{
	size_t o = 0;

	for (size_t i = 0; in[i];) {
		size_t skip = !strncmp(in + i, "${ORIGIN}", 9) ? 9 : !strncmp(in + i, "$ORIGIN", 7) ? 7 : 0;
		const char *piece = skip ? dir : in + i;
		size_t n = skip ? strlen(dir) : 1;

		if (o + n >= len)
			return -1;
		memcpy(out + o, piece, n);
		o += n;
		i += skip ? skip : 1;
	}
	out[o] = 0;
	return 0;
}

/* Whether `path` is an ELF object this process can load (the loader skips others). */
static int loadable(const char *path)
{
	ElfW(Ehdr) eh;
	int fd = open(path, O_RDONLY | O_CLOEXEC), ok;

	if (fd < 0)
		return 0;
	ok = pread(fd, &eh, sizeof(eh), 0) == (ssize_t)sizeof(eh) && !memcmp(eh.e_ident, ELFMAG, SELFMAG) &&
	     eh.e_ident[EI_CLASS] == ELFCLASS64 && eh.e_machine == EM_X86_64;
	close(fd);
	return ok;
}

/* The directories the loader searches for `who` (LD_LIBRARY_PATH, its RUNPATH or its
 * RPATH and its loaders', the system's), as it says itself; NULL if it cannot. */
static Dl_serinfo *search_list(void *who)
{
	Dl_serinfo size, *info;

	if (dlinfo(who, RTLD_DI_SERINFOSIZE, &size))
		return NULL;
	info = malloc(size.dls_size);
	if (!info)
		return NULL;
	memcpy(info, &size, sizeof(size));
	if (dlinfo(who, RTLD_DI_SERINFO, info)) {
		free(info);
		return NULL;
	}
	return info;
}

/* `file` as the dynamic linker would find it for the object `lm` calling: a name with
 * $ORIGIN expanded with lm's origin; a name without a slash looked for in the
 * directories the loader would search for lm and not for this library (its RUNPATH or
 * RPATH: LD_LIBRARY_PATH and the system's are the same for both, searched by the loader
 * itself).  Otherwise `file` as it is. */
static const char *as_caller(const char *file, const void *caller, char *out, size_t len)
{
	static const char me;
	struct link_map *lm = NULL, *self = NULL;
	Dl_serinfo *theirs, *mine;
	char dir[PATH_MAX];
	Dl_info info;
	const char *found = file;
	void *h;

	if (!file || !dladdr1(caller, &info, (void **)&lm, RTLD_DL_LINKMAP) || !lm ||
	    !dladdr1(&me, &info, (void **)&self, RTLD_DL_LINKMAP) || !self || lm == self)
		return file;
	if (strchr(file, '/')) {
		if (!strstr(file, "ORIGIN"))
			return file;
		/* the loader expands it for its caller, this library: do it for theirs, or
		 * give it a name that fails rather than one that finds the wrong file */
		if (getauxval(AT_SECURE) || dlinfo(lm, RTLD_DI_ORIGIN, dir) ||
		    expand(file, dir, out, len))
			return "/nonexistent/$ORIGIN";
		return out;
	}
	h = klp_real_dlopen(file, RTLD_LAZY | RTLD_NOLOAD);
	if (h) { /* loaded already: found by its name, whoever asks */
		klp_real_dlclose(h);
		return file;
	}
	theirs = search_list(lm);
	mine = search_list(self);
	if (theirs && mine) {
		unsigned common = 0;

		while (common < theirs->dls_cnt && common < mine->dls_cnt &&
		       !strcmp(theirs->dls_serpath[theirs->dls_cnt - 1 - common].dls_name,
			       mine->dls_serpath[mine->dls_cnt - 1 - common].dls_name))
			common++;
		for (unsigned i = 0; i + common < theirs->dls_cnt && found == file; i++)
			if (snprintf(out, len, "%s/%s", theirs->dls_serpath[i].dls_name, file) < (int)len &&
			    loadable(out))
				found = out;
	}
	free(theirs);
	free(mine);
	return found;
}

KLP_API void *dlopen(const char *file, int mode)
{
	char path[PATH_MAX];
	void *handle;

	depth++;
	handle = klp_real_dlopen(as_caller(file, __builtin_return_address(0), path, sizeof(path)), mode);
	depth--;
	if (handle && !depth && !(mode & RTLD_NOLOAD))
		klp_control_sync();
	return handle;
}

KLP_API int dlclose(void *handle)
{
	int rc;

	depth++;
	rc = klp_real_dlclose(handle);
	depth--;
	if (!rc && !depth)
		klp_control_sync();
	return rc;
}
