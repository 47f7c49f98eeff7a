/* SPDX-License-Identifier: GPL-2.0 */
/*
 * klpcc_livepatch.h - what patch code of a klpcc kernel series may use.
 *
 * `klpcc build --kernel` includes this header first in every unit it generates, after
 * defining KLPCC_UNIT (the unit's number).  The declarations below expand to nothing
 * that ends up in the running kernel: klpcc reads the states and callbacks of a
 * release from its bundle and writes the module's struct klp_patch itself.
 *
 *   KLPCC_STATE(id, version);        the release keeps system state `id` at `version`
 *   KLPCC_PRE_PATCH(fn);             int fn(struct klp_object *obj): 0 or -errno
 *   KLPCC_POST_PATCH(fn);            void fn(struct klp_object *obj)
 *   KLPCC_PRE_UNPATCH(fn);           void fn(struct klp_object *obj)
 *   KLPCC_POST_UNPATCH(fn);          void fn(struct klp_object *obj)
 *   klpcc_get_state(id)              this patch's struct klp_state of `id`, or NULL
 *   klpcc_get_prev_state(id)         the replaced patches' struct klp_state, or NULL
 *
 * kpatch's KPATCH_*_CALLBACK(fn) and klp-build's KLP_*_CALLBACK(fn) are accepted too.
 */
#ifndef KLPCC_LIVEPATCH_H
#define KLPCC_LIVEPATCH_H

#include <linux/livepatch.h>

#ifndef KLPCC_UNIT
#error "KLPCC_UNIT must be defined before klpcc_livepatch.h is included"
#endif

extern struct klp_patch klpcc_patch;

#define klpcc_get_state(id) klp_get_state(&klpcc_patch, (id))
#define klpcc_get_prev_state(id) klp_get_prev_state(id)

#define KLPCC_STATE(id, version) \
	_Static_assert((id) >= 0 && (version) >= 0, "klpcc state id and version are constants")

/* a pointer the generated klp_patch calls through: klpcc_cb_<kind>_<unit> */
#define __KLPCC_CB_NAME2(kind, unit) klpcc_cb_##kind##_##unit
#define __KLPCC_CB_NAME(kind, unit) __KLPCC_CB_NAME2(kind, unit)
#define __KLPCC_CB(ret, kind, fn) \
	ret (*const __KLPCC_CB_NAME(kind, KLPCC_UNIT))(struct klp_object *) = (fn)

#define KLPCC_PRE_PATCH(fn) __KLPCC_CB(int, pre_patch, fn)
#define KLPCC_POST_PATCH(fn) __KLPCC_CB(void, post_patch, fn)
#define KLPCC_PRE_UNPATCH(fn) __KLPCC_CB(void, pre_unpatch, fn)
#define KLPCC_POST_UNPATCH(fn) __KLPCC_CB(void, post_unpatch, fn)

#define KPATCH_PRE_PATCH_CALLBACK(fn) KLPCC_PRE_PATCH(fn)
#define KPATCH_POST_PATCH_CALLBACK(fn) KLPCC_POST_PATCH(fn)
#define KPATCH_PRE_UNPATCH_CALLBACK(fn) KLPCC_PRE_UNPATCH(fn)
#define KPATCH_POST_UNPATCH_CALLBACK(fn) KLPCC_POST_UNPATCH(fn)
#define KLP_PRE_PATCH_CALLBACK(fn) KLPCC_PRE_PATCH(fn)
#define KLP_POST_PATCH_CALLBACK(fn) KLPCC_POST_PATCH(fn)
#define KLP_PRE_UNPATCH_CALLBACK(fn) KLPCC_PRE_UNPATCH(fn)
#define KLP_POST_UNPATCH_CALLBACK(fn) KLPCC_POST_UNPATCH(fn)

#endif /* KLPCC_LIVEPATCH_H */
