/* SPDX-License-Identifier: MIT */
/*
 * klpcc.h - the userspace live patching runtime: what patch code may use, and the
 * descriptor every patch object exports.
 *
 * A program is built with `klpcc config --cflags` and linked with `klpcc config --libs`
 * (or runs with LD_PRELOAD=libklpcc.so); the runtime starts with the process and listens
 * on a Unix socket for `klpcc apply|status|disable --pid PID`.  A patch object is a
 * shared object made by `klpcc build BUNDLE --binary PROG` (or `--library LIB.so`); it exports
 * `klpcc_patch_descriptor` (below) and nothing needs to call it.
 */
#ifndef KLPCC_H
#define KLPCC_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- patch code: states, shadow variables, callbacks -------------------------- */

struct klpcc_state {
	unsigned long id;
	unsigned int version;
	void *data; /* free for the patch's use; carried over when a replace keeps the id */
};

/* The state `id` of the patch being applied (in callbacks) or installed; NULL if none. */
struct klpcc_state *klpcc_get_state(unsigned long id);
/* The state `id` of the patch being replaced (valid in pre/post_patch); NULL if none. */
struct klpcc_state *klpcc_get_prev_state(unsigned long id);

typedef int (*klpcc_shadow_ctor_t)(void *obj, void *shadow_data, void *ctor_data);
typedef void (*klpcc_shadow_dtor_t)(void *obj, void *shadow_data);

/* Shadow variables: extra data attached to an object of the program by (obj, id),
 * with the kernel's semantics.  alloc fails (NULL) if one exists already; the data
 * is zeroed, then ctor (if any) runs; its error makes alloc return NULL. */
void *klpcc_shadow_get(void *obj, unsigned long id);
void *klpcc_shadow_alloc(void *obj, unsigned long id, size_t size, klpcc_shadow_ctor_t ctor,
			 void *ctor_data);
void *klpcc_shadow_get_or_alloc(void *obj, unsigned long id, size_t size, klpcc_shadow_ctor_t ctor,
				void *ctor_data);
void klpcc_shadow_free(void *obj, unsigned long id, klpcc_shadow_dtor_t dtor);
void klpcc_shadow_free_all(unsigned long id, klpcc_shadow_dtor_t dtor);

/* In patch sources (collected by klpcc from the release; they expand to nothing the
 * program runs):
 *   KLPCC_STATE(id, version);   KLPCC_PRE_PATCH(fn);  KLPCC_POST_PATCH(fn);
 *   KLPCC_PRE_UNPATCH(fn);      KLPCC_POST_UNPATCH(fn);
 *   KLPCC_IMMEDIATE(function);  the function may switch while a thread runs it
 * pre_patch: int fn(void) (non-zero aborts the apply); the others: void fn(void). */
#ifndef KLPCC_UNIT
#define KLPCC_UNIT 0
#endif
#define KLPCC_STATE(id, version) \
	_Static_assert((id) >= 0 && (version) >= 0, "klpcc state id and version are constants")
#define __KLPCC_CB_NAME2(kind, unit) klpcc_cb_##kind##_##unit
#define __KLPCC_CB_NAME(kind, unit) __KLPCC_CB_NAME2(kind, unit)
#define __KLPCC_CB(ret, kind, fn) \
	ret (*const __KLPCC_CB_NAME(kind, KLPCC_UNIT))(void) = (fn)
#define KLPCC_PRE_PATCH(fn) __KLPCC_CB(int, pre_patch, fn)
#define KLPCC_POST_PATCH(fn) __KLPCC_CB(void, post_patch, fn)
#define KLPCC_PRE_UNPATCH(fn) __KLPCC_CB(void, pre_unpatch, fn)
#define KLPCC_POST_UNPATCH(fn) __KLPCC_CB(void, post_unpatch, fn)
#define KLPCC_IMMEDIATE(function) \
	_Static_assert(sizeof(&(function)) > 0, "klpcc immediate function")

/* ---- the patch object's descriptor (written by klpcc build) ------------------- */

#define KLPCC_ABI 2
#define KLPCC_ENTRY_BYTES 5 /* -fpatchable-function-entry=5,0: five one-byte NOPs */

/* An object the patch changes: the program or a shared library, as the kernel's
 * klp_object.  It is matched by build-id among the objects the process has loaded; a
 * library loaded later (dlopen) is patched as it loads, one unloaded takes its
 * redirects with it. */
struct klpcc_object {
	const char *name;      /* its file name (for messages and status) */
	const char *build_id;  /* its GNU build-id, lowercase hex */
	int library;           /* a shared library (it may be loaded later); 0: the program */
};

struct klpcc_func {
	const char *name;      /* the object's symbol (for messages and status) */
	unsigned long offset;  /* its st_value in the object (from its load base) */
	unsigned long size;    /* its st_size */
	void *new_func;        /* the replacement, in the patch object */
	int immediate;         /* skip the stack check for this function */
	const char *why;       /* "modified", or why klpcc added it ("inlined foo", ...) */
	unsigned int object;   /* index in klpcc_patch.objects */
};

struct klpcc_ref {            /* a static of an object the patch code uses */
	const char *name;
	unsigned long offset;  /* its st_value in the object */
	void **slot;           /* where the runtime stores its address before anything runs */
	unsigned int object;   /* index in klpcc_patch.objects */
};

struct klpcc_state_decl {
	unsigned long id;
	unsigned int version;
};

struct klpcc_patch {
	unsigned int abi;               /* KLPCC_ABI */
	const char *name;               /* the release */
	const struct klpcc_object *objects;
	unsigned int nobjects;
	const struct klpcc_func *funcs;
	unsigned int nfuncs;
	const struct klpcc_ref *refs;
	unsigned int nrefs;
	const struct klpcc_state_decl *states;
	unsigned int nstates;
	int (*pre_patch)(void);
	void (*post_patch)(void);
	void (*pre_unpatch)(void);
	void (*post_unpatch)(void);
	const char *manifest;           /* the bundle's manifest.json */
};

#define KLPCC_DESCRIPTOR "klpcc_patch_descriptor"

#ifdef __cplusplus
}
#endif

#endif /* KLPCC_H */
