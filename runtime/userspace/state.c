// SPDX-License-Identifier: MIT
/*
 * state.c - klpcc_get_state and klpcc_get_prev_state.  During the callbacks of a patch
 * being applied (or disabled) the answers come from that patch and, for the previous
 * state, from the patch it replaces; otherwise from the patches installed (one per set
 * of objects: the program's patch, a library's).  And whether
 * a patch's states let it replace the patch installed.
 *
 * Program threads may ask while the control thread switches patches, so an unloaded
 * patch's states are only freed once no lookup is in progress (a reader count: a lookup
 * that started before the switch is still counted).
 */
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

#include "internal.h"

static const struct klp_states *_Atomic installed[KLP_MAX_INSTALLED];
static const struct klp_states *_Atomic context;
static const struct klp_states *_Atomic previous;
static _Atomic long readers;
static struct klp_states **retired;
static size_t nretired;

struct klpcc_state *klp_states_find(const struct klp_states *s, unsigned long id)
{
	if (!s)
		return NULL;
	for (unsigned i = 0; i < s->n; i++)
		if (s->v[i].id == id)
			return &s->v[i];
	return NULL;
}

int klp_is_patch_compatible(const struct klpcc_patch *patch, const struct klp_states *prev,
			    const char *prev_name, char *err, size_t errlen)
{
	for (unsigned i = 0; prev && i < prev->n; i++) {
		const struct klpcc_state *old = &prev->v[i];
		unsigned k;

		for (k = 0; k < patch->nstates && patch->states[k].id != old->id; k++)
			;
		if (k == patch->nstates) {
			snprintf(err, errlen, "%s drops state %lu (version %u) of %s", patch->name,
				 old->id, old->version, prev_name);
			return 0;
		}
		if (patch->states[k].version < old->version) {
			snprintf(err, errlen, "%s has state %lu at version %u, %s installed version %u",
				 patch->name, old->id, patch->states[k].version, prev_name,
				 old->version);
			return 0;
		}
	}
	return 1;
}

static void reclaim(void)
{
	if (atomic_load(&readers))
		return;
	for (size_t i = 0; i < nretired; i++) {
		free(retired[i]->v);
		free(retired[i]);
	}
	nretired = 0;
}

/* Control thread only. */
void klp_states_retire(struct klp_states *s)
{
	struct klp_states **v = realloc(retired, (nretired + 1) * sizeof(*v));

	if (v) {
		retired = v;
		retired[nretired++] = s;
	} /* else: keep it forever rather than free it under a reader */
	reclaim();
}

int klp_state_install(const struct klp_states *s, const struct klp_states *replaces)
{
	for (int i = 0; i < KLP_MAX_INSTALLED; i++)
		if (replaces && atomic_load(&installed[i]) == replaces) {
			atomic_store(&installed[i], s);
			return 0;
		}
	for (int i = 0; s && i < KLP_MAX_INSTALLED; i++)
		if (!atomic_load(&installed[i])) {
			atomic_store(&installed[i], s);
			return 0;
		}
	return s ? -1 : 0;
}

void klp_state_forked(void)
{
	atomic_store(&context, NULL);
	atomic_store(&previous, NULL);
	atomic_store(&readers, 0);
}

void klp_state_set_context(const struct klp_states *cur, const struct klp_states *prev)
{
	atomic_store(&previous, prev);
	atomic_store(&context, cur);
}

KLP_API struct klpcc_state *klpcc_get_state(unsigned long id)
{
	const struct klp_states *s;
	struct klpcc_state *st = NULL;

	atomic_fetch_add(&readers, 1);
	s = atomic_load(&context);
	if (s)
		st = klp_states_find(s, id);
	else
		for (int i = 0; i < KLP_MAX_INSTALLED && !(st = klp_states_find(atomic_load(&installed[i]), id)); i++)
			;
	atomic_fetch_sub(&readers, 1);
	return st;
}

KLP_API struct klpcc_state *klpcc_get_prev_state(unsigned long id)
{
	struct klpcc_state *st = NULL;

	atomic_fetch_add(&readers, 1);
	if (atomic_load(&context))
		st = klp_states_find(atomic_load(&previous), id);
	atomic_fetch_sub(&readers, 1);
	return st;
}
