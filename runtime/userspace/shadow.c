// SPDX-License-Identifier: MIT
/*
 * shadow.c - shadow variables: data attached to an object of the program, found by
 * (obj, id), with the kernel's semantics.  One mutex guards the table; constructors
 * and destructors run under it (as under the kernel's spinlock), so they must not
 * call the shadow functions themselves.  The table is never touched while the world
 * is stopped.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdalign.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define BUCKETS 1024

struct shadow {
	struct shadow *next;
	void *obj;
	unsigned long id;
	alignas(max_align_t) unsigned char data[];
};

static struct shadow *table[BUCKETS];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

/* Held across a fork (pthread_atfork, control.c): no thread of the parent holds it
 * half-way through a change when the child is copied. */
void klp_shadow_fork_prepare(void)
{
	pthread_mutex_lock(&lock);
}

void klp_shadow_fork_done(void)
{
	pthread_mutex_unlock(&lock);
}

static size_t bucket(const void *obj, unsigned long id)
{
	uint64_t h = (uint64_t)(uintptr_t)obj * 0x9e3779b97f4a7c15ull ^ id * 0xc2b2ae3d27d4eb4full;

	return (size_t)(h >> 32) % BUCKETS;
}

/* With the lock held. */
static struct shadow **find(void *obj, unsigned long id)
{
	struct shadow **p = &table[bucket(obj, id)];

	while (*p && !((*p)->obj == obj && (*p)->id == id))
		p = &(*p)->next;
	return p;
}

KLP_API void *klpcc_shadow_get(void *obj, unsigned long id)
{
	struct shadow *s;

	pthread_mutex_lock(&lock);
	s = *find(obj, id);
	pthread_mutex_unlock(&lock);
	return s ? s->data : NULL;
}

static void *get_or_alloc(void *obj, unsigned long id, size_t size, klpcc_shadow_ctor_t ctor,
			  void *ctor_data, int existing_ok)
{
	struct shadow *fresh, **slot;
	void *ret;

	if (size > SIZE_MAX - sizeof(*fresh))
		return NULL;
	fresh = calloc(1, sizeof(*fresh) + size);
	if (!fresh)
		return NULL;
	fresh->obj = obj;
	fresh->id = id;
	pthread_mutex_lock(&lock);
	slot = find(obj, id);
	if (*slot) {
		ret = existing_ok ? (*slot)->data : NULL;
		pthread_mutex_unlock(&lock);
		free(fresh);
		return ret;
	}
	if (ctor && ctor(obj, fresh->data, ctor_data)) {
		pthread_mutex_unlock(&lock);
		free(fresh);
		return NULL;
	}
	*slot = fresh;
	pthread_mutex_unlock(&lock);
	return fresh->data;
}

KLP_API void *klpcc_shadow_alloc(void *obj, unsigned long id, size_t size, klpcc_shadow_ctor_t ctor,
				 void *ctor_data)
{
	return get_or_alloc(obj, id, size, ctor, ctor_data, 0);
}

KLP_API void *klpcc_shadow_get_or_alloc(void *obj, unsigned long id, size_t size,
					klpcc_shadow_ctor_t ctor, void *ctor_data)
{
	return get_or_alloc(obj, id, size, ctor, ctor_data, 1);
}

KLP_API void klpcc_shadow_free(void *obj, unsigned long id, klpcc_shadow_dtor_t dtor)
{
	struct shadow **slot, *s;

	pthread_mutex_lock(&lock);
	slot = find(obj, id);
	s = *slot;
	if (s) {
		*slot = s->next;
		if (dtor)
			dtor(obj, s->data);
	}
	pthread_mutex_unlock(&lock);
	free(s);
}

KLP_API void klpcc_shadow_free_all(unsigned long id, klpcc_shadow_dtor_t dtor)
{
	struct shadow *gone = NULL;

	pthread_mutex_lock(&lock);
	for (size_t b = 0; b < BUCKETS; b++) {
		struct shadow **p = &table[b];

		while (*p) {
			struct shadow *s = *p;

			if (s->id != id) {
				p = &s->next;
				continue;
			}
			*p = s->next;
			if (dtor)
				dtor(s->obj, s->data);
			s->next = gone;
			gone = s;
		}
	}
	pthread_mutex_unlock(&lock);
	while (gone) {
		struct shadow *next = gone->next;

		free(gone);
		gone = next;
	}
}
