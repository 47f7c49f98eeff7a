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
 * would be this library, so the name is resolved for the real caller first.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <elf.h>
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

/* The directory of the object `lm` (the program's when it has no name). */
static int origin(const struct link_map *lm, char *out, size_t len)
{
	char *slash;

	if (lm->l_name && lm->l_name[0]) {
		if (!realpath(lm->l_name, out))
			return -1;
	} else {
		ssize_t n = readlink("/proc/self/exe", out, len - 1);

		if (n <= 0)
			return -1;
		out[n] = 0;
	}
	slash = strrchr(out, '/');
	if (!slash)
		return -1;
	if (slash == out)
		out[1] = 0; /* the root directory */
	else
		*slash = 0;
	return 0;
}

/* `in` with $ORIGIN and ${ORIGIN} replaced by `dir`; -1 if it does not fit. */
static int expand(const char *in, size_t inlen, const char *dir, char *out, size_t len)
{
	size_t o = 0;

	for (size_t i = 0; i < inlen;) {
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

/* The first directory of the colon-separated `list` holding `file`, as a path in out. */
static int search(const char *list, const char *file, const char *dir, char *out, size_t len)
{
	char path[PATH_MAX];

	for (const char *p = list; p && *p;) {
		const char *end = strchrnul(p, ':');

		if (end > p && (!strstr(p, "ORIGIN") || dir) &&
		    !expand(p, (size_t)(end - p), dir ? dir : "", path, sizeof(path)) &&
		    snprintf(out, len, "%s/%s", path, file) < (int)len && !access(out, F_OK))
			return 0;
		p = *end ? end + 1 : end;
	}
	return -1;
}

static const char *dyn_string(const struct link_map *lm, ElfW(Sxword) tag)
{
	uintptr_t strtab = 0;
	long off = -1;

	for (const ElfW(Dyn) *d = lm->l_ld; d && d->d_tag != DT_NULL; d++) {
		if (d->d_tag == DT_STRTAB)
			strtab = d->d_un.d_ptr < lm->l_addr ? lm->l_addr + d->d_un.d_ptr : d->d_un.d_ptr;
		else if (d->d_tag == tag)
			off = (long)d->d_un.d_val;
	}
	return strtab && off >= 0 ? (const char *)(strtab + (uintptr_t)off) : NULL;
}

/* `file` as the dynamic linker would find it for the object calling from `caller`. */
static const char *as_caller(const char *file, const void *caller, char *out, size_t len)
{
	char dir[PATH_MAX];
	const char *runpath, *rpath, *env;
	struct link_map *lm = NULL;
	Dl_info info;
	int secure = getauxval(AT_SECURE) != 0, have_dir;
	void *h;

	if (!file || !dladdr1(caller, &info, (void **)&lm, RTLD_DL_LINKMAP) || !lm)
		return file;
	have_dir = !secure && !origin(lm, dir, sizeof(dir));
	if (strchr(file, '/'))
		return strstr(file, "ORIGIN") && have_dir && !expand(file, strlen(file), dir, out, len) ? out
													  : file;
	h = klp_real_dlopen(file, RTLD_LAZY | RTLD_NOLOAD);
	if (h) { /* loaded already: found by its name, whoever asks */
		klp_real_dlclose(h);
		return file;
	}
	runpath = dyn_string(lm, DT_RUNPATH);
	rpath = runpath ? NULL : dyn_string(lm, DT_RPATH);
	env = secure ? NULL : getenv("LD_LIBRARY_PATH");
	if (runpath && ((env && !search(env, file, NULL, out, len)) ||
			!search(runpath, file, have_dir ? dir : NULL, out, len)))
		return out;
	if (rpath && !search(rpath, file, have_dir ? dir : NULL, out, len))
		return out;
	return file;
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
