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
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>

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

KLP_API void *dlopen(const char *file, int mode)
{
	void *handle;

	depth++;
	handle = klp_real_dlopen(file, mode);
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
