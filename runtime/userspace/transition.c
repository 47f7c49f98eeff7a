// SPDX-License-Identifier: MIT
/*
 * transition.c - the switch's safe point: stop the world (stop.c), check that no
 * stopped thread has a frame in a function being switched; if none does, write the
 * entries (the commit callback) and release everyone.
 *
 * A busy thread is not only retried: it is trapped (parking.c), so that it parks right
 * after leaving the last affected function, until the switch is over.  The control
 * thread releases the world, waits (bounded) for those threads to park, and stops it
 * again; retries back off from 1 ms to 50 ms until the deadline.  On a timeout the
 * return addresses still pointing at the trampoline get their value back.
 *
 * The entry window: the five bytes at an entry are written while everyone is stopped,
 * but a thread may have been interrupted between two of the five NOPs.  Such a thread
 * has run nothing of the function yet; its saved instruction pointer is moved back to
 * the entry, so that it runs the five new bytes from their start.
 *
 * While the world is stopped the control thread, like the stopped threads (stop.c),
 * allocates nothing, takes no lock and calls nothing but system calls and the unwinder.
 */
#define _GNU_SOURCE
#include <linux/membarrier.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

#define MAX_DELAY_MS 50
#define MIN_STOP_WAIT_US 100000	/* a stop may always take this long */

static int sync_core;			/* membarrier SYNC_CORE registered */
static _Atomic unsigned long rewinds;

/* ---- the check (world stopped) --------------------------------------------------------- */

struct verdict {
	int busy;
	int outer;		/* the outermost frame in a busy range, -1 if none */
	const struct klp_busy_range *range;
	int transit;		/* between the trampoline's entry and its return address store */
	int window;		/* a signal frame inside the NOPs of an entry being written */
};

static const struct klp_busy_range *busy_at(const struct klp_transition *t, uintptr_t pc)
{
	size_t lo = 0, hi = t->nbusy;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (pc < t->busy[mid].lo)
			hi = mid;
		else if (pc >= t->busy[mid].hi)
			lo = mid + 1;
		else
			return &t->busy[mid];
	}
	return NULL;
}

/* The entry whose five bytes hold pc, or 0. */
static uintptr_t entry_window(const struct klp_transition *t, uintptr_t pc)
{
	size_t lo = 0, hi = t->nentries;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		uintptr_t e = t->entries[mid];

		if (pc < e)
			hi = mid;
		else if (pc >= e + KLPCC_ENTRY_BYTES)
			lo = mid + 1;
		else
			return e;
	}
	return 0;
}

static void judge(const struct klp_transition *t, const struct klp_slot *s, struct verdict *v)
{
	*v = (struct verdict){ .outer = -1 };
	if (!s->reliable) {
		v->busy = 1;
		return;
	}
	for (int k = 0; k < s->nframes; k++) {
		uintptr_t pc = klp_frame_pc(s, k), e;
		const struct klp_busy_range *r;

		if (klp_park_in_transit(pc))
			v->busy = v->transit = 1;
		e = s->before[k] ? entry_window(t, pc) : 0;
		/* Interrupted by the stop between an entry's NOPs: nothing of the function ran
		 * yet, and the thread is moved back to the entry at the switch. */
		if (e && k == 0)
			continue;
		/* Interrupted there by another signal whose handler still runs: when it returns
		 * the thread would resume inside the new bytes.  Busy, even if immediate. */
		if (e && pc != e) {
			v->busy = v->window = 1;
			v->outer = k;
			v->range = NULL;
			continue;
		}
		r = busy_at(t, pc);
		if (r) {
			v->busy = 1;
			v->outer = k;
			v->range = r;
		}
	}
}

/* Move threads interrupted inside an entry's NOPs back to the entry. */
static unsigned rewind_entry_windows(const struct klp_transition *t, struct klp_slots *all)
{
	int n = atomic_load(&all->n);
	unsigned count = 0;

	for (int i = 0; i < n; i++) {
		struct klp_slot *s = &all->v[i];
		uintptr_t e;

		if (atomic_load(&s->state) != KLP_THREAD_STOPPED)
			continue;
		e = entry_window(t, s->ip);
		if (e && s->ip != e) {
			s->uc->uc_mcontext.gregs[REG_RIP] = (greg_t)e;
			count++;
		}
	}
	return count;
}

static int in_watch(const struct klp_transition *t, uintptr_t pc)
{
	for (size_t w = 0; w < t->nwatch; w++)
		if (pc >= t->watch[w].lo && pc < t->watch[w].hi)
			return t->watch_group[w];
	return -1;
}

static void find_watched(const struct klp_transition *t, struct klp_slots *all)
{
	int n = atomic_load(&all->n);

	for (int i = 0; i < n; i++) {
		const struct klp_slot *s = &all->v[i];
		int g;

		if (atomic_load(&s->state) != KLP_THREAD_STOPPED)
			continue;
		if ((g = in_watch(t, s->ip)) >= 0)
			t->watch_hit[g] = 1;
		for (int k = 0; k < s->nframes; k++)
			if ((g = in_watch(t, klp_frame_pc(s, k))) >= 0)
				t->watch_hit[g] = 1;
	}
}

struct busy_note {
	pid_t tid;
	int unreliable, transit, window;
	uintptr_t ip;
	const struct klp_busy_range *range;
};

/* Check every stopped thread; trap the busy ones if `trap`.  Returns the number of
 * busy threads and describes the first in *note. */
static int check_threads(const struct klp_transition *t, struct klp_slots *all, unsigned apply,
			 int trap, struct busy_note *note)
{
	int n = atomic_load(&all->n), busy = 0;

	for (int i = 0; i < n; i++) {
		const struct klp_slot *s = &all->v[i];
		struct verdict v;

		if (atomic_load(&s->state) != KLP_THREAD_STOPPED)
			continue;
		judge(t, s, &v);
		if (!v.busy)
			continue;
		if (!busy++) {
			*note = (struct busy_note){ atomic_load(&s->tid), !s->reliable, v.transit,
						    v.window, s->ip, v.range };
		}
		if (trap)
			klp_park_trap(s, v.outer, apply);
	}
	return busy;
}

static void describe_busy(struct klp_transition *t, const struct busy_note *note, uint64_t waited_ms)
{
	if (note->range)
		snprintf(t->error, sizeof(t->error),
			 "timeout after %llu ms: thread %d stayed in %s (%s), which the patch "
			 "changes: %s",
			 (unsigned long long)waited_ms, (int)note->tid, note->range->name,
			 note->range->what, note->range->why ? note->range->why : "modified");
	else if (note->window)
		snprintf(t->error, sizeof(t->error),
			 "timeout after %llu ms: thread %d stayed in a signal handler that "
			 "interrupted it inside the entry of a function being switched",
			 (unsigned long long)waited_ms, (int)note->tid);
	else if (note->unreliable)
		snprintf(t->error, sizeof(t->error),
			 "timeout after %llu ms: the stack of thread %d cannot be unwound reliably "
			 "(interrupted at %#lx)",
			 (unsigned long long)waited_ms, (int)note->tid, (unsigned long)note->ip);
	else
		snprintf(t->error, sizeof(t->error),
			 "timeout after %llu ms: thread %d stayed in the park trampoline",
			 (unsigned long long)waited_ms, (int)note->tid);
}

static int cmp_busy(const void *a, const void *b)
{
	const struct klp_busy_range *x = a, *y = b;

	return x->lo < y->lo ? -1 : x->lo > y->lo;
}

/* Sort the busy ranges and merge overlaps, so that a binary search finds them. */
static void merge_busy(struct klp_transition *t)
{
	size_t out = 0;

	qsort(t->busy, t->nbusy, sizeof(*t->busy), cmp_busy);
	for (size_t i = 0; i < t->nbusy; i++) {
		if (t->busy[i].lo >= t->busy[i].hi)
			continue;
		if (out && t->busy[i].lo < t->busy[out - 1].hi) {
			if (t->busy[i].hi > t->busy[out - 1].hi)
				t->busy[out - 1].hi = t->busy[i].hi;
			continue;
		}
		t->busy[out++] = t->busy[i];
	}
	t->nbusy = out;
}

static void sleep_us(uint64_t us)
{
	struct timespec ts = { (time_t)(us / 1000000u), (long)(us % 1000000u) * 1000 };

	nanosleep(&ts, NULL);
}

static uint64_t next_delay(uint64_t us)
{
	return us * 2 > MAX_DELAY_MS * 1000 ? MAX_DELAY_MS * 1000 : us * 2;
}

/* The check passed (world stopped): write, move threads out of entry windows, note
 * which watched objects still hold a frame, make the new code visible, end the apply. */
static void switch_stopped(struct klp_transition *t, struct klp_slots *all, unsigned apply)
{
	t->commit(t->commit_arg);
	t->rewound = rewind_entry_windows(t, all);
	if (t->nwatch)
		find_watched(t, all);
	if (sync_core)
		syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE, 0, 0);
	klp_park_end(all, apply);
}

int klp_transition_run(struct klp_transition *t)
{
	unsigned apply = klp_park_begin();
	uint64_t start = klp_now_us(), delay_us = 1000;
	struct busy_note note;
	char err[256];

	if (klp_stop_ready(t->error, sizeof(t->error)))
		return -2;
	merge_busy(t);
	for (;;) {
		uint64_t now = klp_now_us(), t0 = now;
		struct klp_slots *all;

		t->tries++;
		if (klp_stop_world(now + MIN_STOP_WAIT_US > t->deadline_us ? now + MIN_STOP_WAIT_US
									  : t->deadline_us,
				   err, sizeof(err))) {
			if (klp_now_us() >= t->deadline_us)
				break;
			sleep_us(delay_us);
			delay_us = next_delay(delay_us);
			continue;
		}
		all = klp_stopped_threads();
		now = klp_now_us();
		if (!check_threads(t, all, apply, now < t->deadline_us, &note)) {
			switch_stopped(t, all, apply);
			t->stopped_us = klp_now_us() - t0;
			klp_release_world();
			t->parked = klp_parked();
			atomic_fetch_add(&rewinds, t->rewound);
			return 0;
		}
		if (now >= t->deadline_us) {
			klp_park_end(all, apply);
			klp_release_world();
			t->parked = klp_parked();
			describe_busy(t, &note, (now - start) / 1000);
			return -1;
		}
		klp_release_world();
		klp_park_wait_traps(apply, klp_now_us() + delay_us);
		delay_us = next_delay(delay_us);
	}

	/* The world could not be stopped in time.  Stop it once more to take the traps
	 * back; should that fail too they stay: a thread returning through one after the
	 * apply passes straight through. */
	snprintf(t->error, sizeof(t->error), "%s", err);
	if (klp_park_pending(apply) &&
	    !klp_stop_world(klp_now_us() + MIN_STOP_WAIT_US, err, sizeof(err))) {
		klp_park_end(klp_stopped_threads(), apply);
		klp_release_world();
	} else {
		klp_park_end(NULL, apply);
	}
	t->parked = klp_parked();
	return -1;
}

unsigned long klp_transition_rewinds(void)
{
	return atomic_load(&rewinds);
}

int klp_transition_init(int sig)
{
	if (klp_stop_init(sig))
		return -1;
	if (syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE, 0, 0) == 0)
		sync_core = 1;
	return 0;
}
