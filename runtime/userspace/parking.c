// SPDX-License-Identifier: MIT
/*
 * parking.c - parking busy threads.  A thread the stack check finds inside a function
 * being switched gets the return address of its outermost affected frame replaced by
 * the park trampoline (park.S): it blocks right after leaving the last affected
 * function, until the apply is over.  Each such trap is a park record; the thread
 * looks its record up (klpcc_park_enter) to find its real return address.  When the
 * apply ends, with the world stopped, the traps nobody returned through yet get their
 * return address back, and the parked threads are let go.
 */
#define _GNU_SOURCE
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#include "internal.h"

/* park.S */
extern const char klpcc_park_begin[], klpcc_park_trampoline[], klpcc_park_stored[],
	klpcc_park_end[];

enum park_state { PARK_FREE, PARK_TRAPPED };

struct park {
	_Atomic enum park_state state;
	pid_t tid;
	uintptr_t where;	/* the stack word holding the return address */
	uintptr_t ra;		/* the return address it held */
	unsigned apply;
};

static struct park parks[KLP_MAX_THREADS];
static _Atomic unsigned apply_seq;	/* the apply in progress (traps belong to it) */
static _Atomic unsigned apply_done;	/* futex: the last apply over; parked threads go */
static _Atomic unsigned park_events;	/* futex: bumped by every thread that parks */
static _Atomic unsigned parked_now;	/* threads of the current apply parked */

/* ---- in a parked thread (called from park.S) -------------------------------------- */

__attribute__((used, force_align_arg_pointer)) uintptr_t klpcc_park_enter(uintptr_t cfa,
									  unsigned long *apply)
{
	pid_t tid = klp_gettid();

	for (int i = 0; i < KLP_MAX_THREADS; i++) {
		struct park *p = &parks[i];

		if (atomic_load(&p->state) != PARK_TRAPPED || p->where != cfa - 8 || p->tid != tid)
			continue;
		uintptr_t ra = p->ra;

		*apply = p->apply;
		if (p->apply == atomic_load(&apply_seq))
			atomic_fetch_add(&parked_now, 1);
		atomic_store(&p->state, PARK_FREE);
		atomic_fetch_add(&park_events, 1);
		klp_futex_wake_one(&park_events);
		return ra;
	}
	static const char msg[] = "klpcc: a thread returned into the park trampoline without a trap\n";
	if (write(STDERR_FILENO, msg, sizeof(msg) - 1) < 0)
		abort();
	abort();
}

__attribute__((used, force_align_arg_pointer)) void klpcc_park_wait(unsigned long apply)
{
	for (;;) {
		unsigned done = atomic_load(&apply_done);

		if ((int)(done - (unsigned)apply) >= 0)
			return;
		klp_futex_wait(&apply_done, done);
	}
}

/* ---- the control thread ------------------------------------------------------------- */

unsigned klp_park_begin(void)
{
	unsigned apply = atomic_fetch_add(&apply_seq, 1) + 1;

	atomic_store(&parked_now, 0);
	return apply;
}

unsigned klp_parked(void)
{
	return atomic_load(&parked_now);
}

int klp_park_in_transit(uintptr_t pc)
{
	return pc >= (uintptr_t)klpcc_park_trampoline && pc < (uintptr_t)klpcc_park_stored;
}

int klp_park_trap(const struct klp_slot *s, int outer, unsigned apply)
{
	const struct klp_frame *caller;
	uintptr_t *where;

	if (outer < 0 || outer + 1 >= s->nframes)
		return 0;
	caller = &s->frames[outer + 1];
	if (caller->ip == (uintptr_t)klpcc_park_trampoline)
		return 1;
	where = (uintptr_t *)(caller->sp - 8);
	if (s->before[outer + 1] || *where != caller->ip)
		return 0;
	for (int i = 0; i < KLP_MAX_THREADS; i++) {
		struct park *p = &parks[i];

		if (atomic_load(&p->state) != PARK_FREE)
			continue;
		p->tid = atomic_load(&s->tid);
		p->where = (uintptr_t)where;
		p->ra = *where;
		p->apply = apply;
		atomic_store(&p->state, PARK_TRAPPED);
		*where = (uintptr_t)klpcc_park_trampoline;
		return 1;
	}
	return 0;
}

static const struct klp_slot *stopped_thread(struct klp_slots *all, pid_t tid)
{
	int n = atomic_load(&all->n);

	for (int i = 0; i < n; i++)
		if (atomic_load(&all->v[i].tid) == tid &&
		    atomic_load(&all->v[i].state) == KLP_THREAD_STOPPED)
			return &all->v[i];
	return NULL;
}

static int in_transit(const struct klp_slot *s)
{
	for (int k = 0; k < s->nframes; k++)
		if (klp_park_in_transit(klp_frame_pc(s, k)))
			return 1;
	return !s->reliable && s->ip >= (uintptr_t)klpcc_park_trampoline &&
	       s->ip < (uintptr_t)klpcc_park_end;
}

/* Take back the traps nobody returned through yet.  A thread already inside the
 * trampoline keeps its trap until it reads it. */
static void remove_traps(struct klp_slots *all)
{
	for (int i = 0; i < KLP_MAX_THREADS; i++) {
		struct park *p = &parks[i];
		const struct klp_slot *s;

		if (atomic_load(&p->state) != PARK_TRAPPED)
			continue;
		s = stopped_thread(all, p->tid);
		if (s && in_transit(s))
			continue;
		if (s && *(uintptr_t *)p->where == (uintptr_t)klpcc_park_trampoline)
			*(uintptr_t *)p->where = p->ra;
		atomic_store(&p->state, PARK_FREE);
	}
}

unsigned klp_park_pending(unsigned apply)
{
	unsigned n = 0;

	for (int i = 0; i < KLP_MAX_THREADS; i++)
		if (atomic_load(&parks[i].state) == PARK_TRAPPED && parks[i].apply == apply)
			n++;
	return n;
}

void klp_park_wait_traps(unsigned apply, uint64_t until)
{
	int traps = klp_park_pending(apply) > 0;

	for (;;) {
		unsigned seen = atomic_load(&park_events);
		uint64_t now = klp_now_us();

		if (now >= until || (traps && !klp_park_pending(apply)))
			return;
		klp_futex_wait_us(&park_events, seen, until - now);
	}
}

void klp_park_forked(pid_t forker)
{
	pid_t me = klp_gettid();

	/* In a child: no apply is in progress here.  A trap on the forking thread's stack
	 * (it was busy in the parent) is its own now (its tid is the child's) and lets it
	 * return straight through; the other threads' traps are gone with them. */
	for (int i = 0; i < KLP_MAX_THREADS; i++)
		if (atomic_load(&parks[i].state) == PARK_TRAPPED && parks[i].tid == forker)
			parks[i].tid = me;
	atomic_store(&apply_done, atomic_load(&apply_seq));
	atomic_store(&parked_now, 0);
}

void klp_park_end(struct klp_slots *stopped, unsigned apply)
{
	if (stopped)
		remove_traps(stopped);
	atomic_store(&apply_done, apply);
	klp_futex_wake_all(&apply_done);
}
