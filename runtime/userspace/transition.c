// SPDX-License-Identifier: MIT
/*
 * transition.c - the switch's safe point.  The control thread stops every other thread
 * with a real-time signal; each thread records, from its own signal handler, the
 * interrupted registers and its stack (the unwind tables, _Unwind_Backtrace) into a
 * preallocated slot and waits on a futex.  With the world stopped the control thread
 * checks that no frame lies in a function being switched; if none does it writes the
 * entries (the commit callback) and releases everyone.
 *
 * A busy thread is not only retried: the return address of its outermost affected
 * frame is replaced by the park trampoline (park.S), so that the thread blocks right
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
 * While the world is stopped neither the handler nor the control thread allocates,
 * locks or calls anything but system calls and the unwinder.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <linux/membarrier.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>
#include <unwind.h>

#include "internal.h"

#define MAX_DELAY_MS 50
#define MIN_STOP_WAIT_US 100000	/* a stop may always take this long */

struct frame {
	uintptr_t ip;	/* as the unwinder reports it: a return address but for frame 0 */
	uintptr_t sp;	/* the frame's stack pointer (its callee's CFA) */
};

struct slot {
	_Atomic pid_t tid;
	_Atomic unsigned seq;		/* the stop it belongs to */
	_Atomic int arrived;		/* 0 signalled, 1 stopped, 2 gone */
	ucontext_t *uc;
	uintptr_t ip;			/* the interrupted instruction */
	int nframes;
	int reliable;			/* the unwinder reached the outermost frame */
	struct frame frames[KLP_MAX_FRAMES];
	unsigned char before[KLP_MAX_FRAMES];	/* ip is the faulting insn, not a return */
};

struct slots {
	_Atomic int n;
	struct slot v[KLP_MAX_THREADS];
};

enum { PARK_FREE, PARK_TRAPPED };

struct park {
	_Atomic int state;
	pid_t tid;
	uintptr_t where;	/* the stack word holding the return address */
	uintptr_t ra;		/* the return address it held */
	unsigned apply;
};

static struct slots *_Atomic slots;
static _Atomic unsigned stop_seq;	/* odd while a stop is in progress */
static _Atomic unsigned arrivals;	/* futex: bumped by every thread that stops */
static pid_t control_tid;
static int stop_sig;
static int sync_core;			/* membarrier SYNC_CORE registered */

static struct park parks[KLP_MAX_THREADS];
static _Atomic unsigned apply_seq;	/* the apply in progress (traps belong to it) */
static _Atomic unsigned apply_done;	/* futex: the last apply over; parked threads go */
static _Atomic unsigned park_events;	/* futex: bumped by every thread that parks */
static _Atomic unsigned parked_now;	/* threads of the current apply parked */
static _Atomic unsigned long rewinds;

static long futex(_Atomic unsigned *word, int op, unsigned val, const struct timespec *ts)
{
	return syscall(SYS_futex, word, op, val, ts, NULL, 0);
}

static void futex_wait_us(_Atomic unsigned *word, unsigned val, uint64_t us)
{
	struct timespec ts = { (time_t)(us / 1000000u), (long)(us % 1000000u) * 1000 };

	futex(word, FUTEX_WAIT_PRIVATE, val, &ts);
}

static void futex_wake_all(_Atomic unsigned *word)
{
	futex(word, FUTEX_WAKE_PRIVATE, INT_MAX, NULL);
}

/* ---- in the stopped thread ------------------------------------------------------ */

struct unwinding {
	struct slot *s;
	int started, n, overflow;
};

static _Unwind_Reason_Code record_frame(struct _Unwind_Context *ctx, void *arg)
{
	struct unwinding *u = arg;
	int before = 0;
	uintptr_t ip = _Unwind_GetIPInfo(ctx, &before);

	/* Skip the handler's own frames: the first frame entered by a signal is ours. */
	if (!u->started) {
		if (!before)
			return _URC_NO_REASON;
		u->started = 1;
	}
	if (u->n == KLP_MAX_FRAMES) {
		u->overflow = 1;
		return _URC_END_OF_STACK;
	}
	u->s->frames[u->n] = (struct frame){ ip, _Unwind_GetCFA(ctx) };
	u->s->before[u->n] = (unsigned char)before;
	u->n++;
	return _URC_NO_REASON;
}

static void record_stack(struct slot *s, ucontext_t *uc)
{
	struct unwinding u = { .s = s };

	s->uc = uc;
	s->ip = (uintptr_t)uc->uc_mcontext.gregs[REG_RIP];
	_Unwind_Backtrace(record_frame, &u);
	/* A complete stack ends with the outermost frame's undefined return address (ip 0):
	 * a frame without unwind information ends it earlier. */
	s->reliable = u.started && !u.overflow && u.n >= 2 && u.s->frames[u.n - 1].ip == 0 &&
		      s->frames[0].ip == s->ip;
	s->nframes = s->reliable ? u.n - 1 : u.n;
}

static struct slot *own_slot(unsigned seq)
{
	struct slots *all = atomic_load(&slots);
	pid_t tid = klp_gettid();
	int n = atomic_load(&all->n);

	for (int i = 0; i < n; i++) {
		struct slot *s = &all->v[i];

		if (atomic_load(&s->tid) == tid && atomic_load(&s->seq) == seq &&
		    atomic_load(&s->arrived) == 0)
			return s;
	}
	return NULL;
}

static void on_stop_signal(int sig, siginfo_t *si, void *ucv)
{
	int saved_errno = errno;
	unsigned seq = atomic_load(&stop_seq);
	struct slot *s;

	(void)sig;
	if (!(seq & 1) || si->si_code != SI_TKILL || si->si_pid != klp_prog.pid)
		goto out;
	s = own_slot(seq);
	if (!s)
		goto out;
	record_stack(s, ucv);
	atomic_store(&s->arrived, 1);
	atomic_fetch_add(&arrivals, 1);
	futex(&arrivals, FUTEX_WAKE_PRIVATE, 1, NULL);
	while (atomic_load(&stop_seq) == seq)
		futex(&stop_seq, FUTEX_WAIT_PRIVATE, seq, NULL);
	/* The control thread may have moved our saved instruction pointer (uc) meanwhile. */
out:
	errno = saved_errno;
}

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
		futex(&park_events, FUTEX_WAKE_PRIVATE, 1, NULL);
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
		futex(&apply_done, FUTEX_WAIT_PRIVATE, done, NULL);
	}
}

/* ---- stopping and releasing (control thread) ---------------------------------------- */

struct dirent64_raw {
	uint64_t ino;
	int64_t off;
	unsigned short reclen;
	unsigned char type;
	char name[];
};

static char dents[32768];

static int parse_tid(const char *s, pid_t *tid)
{
	long v = 0;

	if (!*s)
		return -1;
	for (; *s; s++) {
		if (*s < '0' || *s > '9' || v > INT_MAX / 10)
			return -1;
		v = v * 10 + (*s - '0');
	}
	*tid = (pid_t)v;
	return 0;
}

static int known(struct slots *all, int n, pid_t tid)
{
	for (int i = 0; i < n; i++)
		if (atomic_load(&all->v[i].tid) == tid)
			return 1;
	return 0;
}

/* Signal every thread not signalled yet; returns how many were added, -1 if too many. */
static int signal_new_threads(struct slots *all, unsigned seq)
{
	int fd = open("/proc/self/task", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	int added = 0;
	long got;

	if (fd < 0)
		return -1;
	while ((got = syscall(SYS_getdents64, fd, dents, sizeof(dents))) > 0) {
		for (long off = 0; off < got;) {
			struct dirent64_raw *d = (struct dirent64_raw *)(dents + off);
			int n = atomic_load(&all->n);
			pid_t tid;

			off += d->reclen;
			if (parse_tid(d->name, &tid) || tid == control_tid || known(all, n, tid))
				continue;
			if (n == KLP_MAX_THREADS) {
				close(fd);
				return -1;
			}
			struct slot *s = &all->v[n];

			atomic_store(&s->arrived, 0);
			atomic_store(&s->seq, seq);
			atomic_store(&s->tid, tid);
			s->nframes = 0;
			s->reliable = 0;
			atomic_store(&all->n, n + 1);
			if (syscall(SYS_tgkill, klp_prog.pid, tid, stop_sig) && errno == ESRCH)
				atomic_store(&s->arrived, 2);
			added++;
		}
	}
	close(fd);
	return added;
}

static void format_uint(char *out, unsigned long v)
{
	char tmp[24];
	int n = 0;

	do {
		tmp[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	while (n)
		*out++ = tmp[--n];
	*out = 0;
}

/* Whether the thread has exited (or is a zombie that will never handle a signal). */
static int thread_gone(pid_t tid)
{
	char path[64] = "/proc/self/task/", buf[512];
	int fd;
	long n;
	char *p;

	format_uint(path + strlen(path), (unsigned long)tid);
	strcat(path, "/stat");
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT || errno == ESRCH;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return 1;
	buf[n] = 0;
	p = strrchr(buf, ')');
	return p && p[1] == ' ' && (p[2] == 'Z' || p[2] == 'X');
}

static void release_world(void)
{
	atomic_fetch_add(&stop_seq, 1);
	futex_wake_all(&stop_seq);
}

/* Wait until every signalled thread stopped or is gone; -1 (and *late) if one is late. */
static int wait_arrivals(struct slots *all, uint64_t limit, pid_t *late)
{
	uint64_t last_probe = klp_now_us();

	for (;;) {
		unsigned seen = atomic_load(&arrivals);
		int n = atomic_load(&all->n), waiting = -1;
		uint64_t now;

		for (int i = 0; i < n && waiting < 0; i++)
			if (atomic_load(&all->v[i].arrived) == 0)
				waiting = i;
		if (waiting < 0)
			return 0;
		now = klp_now_us();
		if (now - last_probe >= 1000) {
			last_probe = now;
			for (int i = 0; i < n; i++) {
				struct slot *s = &all->v[i];

				if (atomic_load(&s->arrived) == 0 && thread_gone(atomic_load(&s->tid)))
					atomic_store(&s->arrived, 2);
			}
			continue;
		}
		if (now >= limit) {
			*late = atomic_load(&all->v[waiting].tid);
			return -1;
		}
		futex_wait_us(&arrivals, seen, 1000);
	}
}

/* A stop given up: a thread signalled may still run its handler later and write into
 * its slot, so the next stop uses fresh slots (the old ones stay mapped). */
static void abandon_stop(void)
{
	void *fresh;

	release_world();
	fresh = mmap(NULL, sizeof(struct slots), PROT_READ | PROT_WRITE,
		     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (fresh != MAP_FAILED)
		atomic_store(&slots, (struct slots *)fresh);
}

/* Stop every thread but this one.  0 when stopped; otherwise the world runs again. */
static int stop_world(uint64_t limit, char *err, size_t errlen)
{
	struct slots *all = atomic_load(&slots);
	unsigned seq = atomic_fetch_add(&stop_seq, 1) + 1;
	pid_t late = 0;
	int added;

	atomic_store(&all->n, 0);
	do {
		added = signal_new_threads(all, seq);
		if (added < 0) {
			abandon_stop();
			snprintf(err, errlen, "cannot stop the threads (more than %d, or no /proc)",
				 KLP_MAX_THREADS);
			return -1;
		}
		if (wait_arrivals(all, limit, &late)) {
			abandon_stop();
			snprintf(err, errlen, "thread %d did not stop (is signal %d blocked in it?)",
				 (int)late, stop_sig);
			return -1;
		}
	} while (added > 0);
	return 0;
}

/* ---- the check (world stopped) --------------------------------------------------------- */

struct verdict {
	int busy;
	int outer;		/* the outermost frame in a busy range, -1 if none */
	const struct klp_busy_range *range;
	int transit;		/* between the trampoline's entry and its return address store */
	int window;		/* a signal frame inside the NOPs of an entry being written */
	int trapped;		/* the outer frame already returns into the trampoline */
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

static uintptr_t frame_pc(const struct slot *s, int k)
{
	return s->frames[k].ip - !s->before[k];
}

static void judge(const struct klp_transition *t, const struct slot *s, struct verdict *v)
{
	*v = (struct verdict){ .outer = -1 };
	if (!s->reliable) {
		v->busy = 1;
		return;
	}
	for (int k = 0; k < s->nframes; k++) {
		uintptr_t pc = frame_pc(s, k), e;
		const struct klp_busy_range *r;

		if (pc >= (uintptr_t)klpcc_park_trampoline && pc < (uintptr_t)klpcc_park_stored)
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
	if (v->outer >= 0 && v->outer + 1 < s->nframes &&
	    s->frames[v->outer + 1].ip == (uintptr_t)klpcc_park_trampoline)
		v->trapped = 1;
}

/* Make the outermost affected frame return into the trampoline; 1 if trapped. */
static int set_trap(const struct slot *s, const struct verdict *v, unsigned apply)
{
	const struct frame *caller;
	uintptr_t *where;

	if (v->outer < 0 || v->outer + 1 >= s->nframes || v->trapped)
		return v->trapped;
	caller = &s->frames[v->outer + 1];
	where = (uintptr_t *)(caller->sp - 8);
	if (s->before[v->outer + 1] || *where != caller->ip)
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

static const struct slot *stopped_thread(struct slots *all, pid_t tid)
{
	int n = atomic_load(&all->n);

	for (int i = 0; i < n; i++)
		if (atomic_load(&all->v[i].tid) == tid && atomic_load(&all->v[i].arrived) == 1)
			return &all->v[i];
	return NULL;
}

static int in_transit(const struct slot *s)
{
	for (int k = 0; k < s->nframes; k++) {
		uintptr_t pc = frame_pc(s, k);

		if (pc >= (uintptr_t)klpcc_park_trampoline && pc < (uintptr_t)klpcc_park_stored)
			return 1;
	}
	return !s->reliable && s->ip >= (uintptr_t)klpcc_park_trampoline &&
	       s->ip < (uintptr_t)klpcc_park_end;
}

/* The apply is over (world stopped): take back the traps nobody returned through yet.
 * A thread already inside the trampoline keeps its trap until it reads it. */
static void remove_traps(struct slots *all)
{
	for (int i = 0; i < KLP_MAX_THREADS; i++) {
		struct park *p = &parks[i];
		const struct slot *s;

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

static unsigned pending_traps(unsigned apply)
{
	unsigned n = 0;

	for (int i = 0; i < KLP_MAX_THREADS; i++)
		if (atomic_load(&parks[i].state) == PARK_TRAPPED && parks[i].apply == apply)
			n++;
	return n;
}

/* Until every trap of this apply was returned through, or `until`.  With no trap to
 * wait for (the busy threads could not be trapped) this is the backoff's sleep. */
static void wait_parking(unsigned apply, uint64_t until)
{
	int traps = pending_traps(apply) > 0;

	for (;;) {
		unsigned seen = atomic_load(&park_events);
		uint64_t now = klp_now_us();

		if (now >= until || (traps && !pending_traps(apply)))
			return;
		futex_wait_us(&park_events, seen, until - now);
	}
}

/* Move threads interrupted inside an entry's NOPs back to the entry. */
static unsigned rewind_entry_windows(const struct klp_transition *t, struct slots *all)
{
	int n = atomic_load(&all->n);
	unsigned count = 0;

	for (int i = 0; i < n; i++) {
		struct slot *s = &all->v[i];
		uintptr_t e;

		if (atomic_load(&s->arrived) != 1)
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

static void find_watched(const struct klp_transition *t, struct slots *all)
{
	int n = atomic_load(&all->n);

	for (int i = 0; i < n; i++) {
		const struct slot *s = &all->v[i];
		int g;

		if (atomic_load(&s->arrived) != 1)
			continue;
		if ((g = in_watch(t, s->ip)) >= 0)
			t->watch_hit[g] = 1;
		for (int k = 0; k < s->nframes; k++)
			if ((g = in_watch(t, frame_pc(s, k))) >= 0)
				t->watch_hit[g] = 1;
	}
}

struct busy_note {
	pid_t tid;
	int unreliable, transit, window;
	uintptr_t ip;
	const struct klp_busy_range *range;
};

/* Check every stopped thread; trap the busy ones unless `final`.  Returns the number
 * of busy threads and describes the first in *note. */
static int check_threads(const struct klp_transition *t, struct slots *all, unsigned apply,
			 int trap, struct busy_note *note)
{
	int n = atomic_load(&all->n), busy = 0;

	for (int i = 0; i < n; i++) {
		const struct slot *s = &all->v[i];
		struct verdict v;

		if (atomic_load(&s->arrived) != 1)
			continue;
		judge(t, s, &v);
		if (!v.busy)
			continue;
		if (!busy++) {
			*note = (struct busy_note){ atomic_load(&s->tid), !s->reliable, v.transit,
						    v.window, s->ip, v.range };
		}
		if (trap)
			set_trap(s, &v, apply);
	}
	return busy;
}

static void describe_busy(struct klp_transition *t, const struct busy_note *note, uint64_t waited_ms)
{
	if (note->range)
		snprintf(t->error, sizeof(t->error),
			 "timeout after %llu ms: thread %d stayed in %s (%s)",
			 (unsigned long long)waited_ms, (int)note->tid, note->range->name,
			 note->range->what);
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

/* The apply is over (world stopped): traps taken back, parked threads let go. */
static void end_apply(struct slots *all, unsigned apply)
{
	remove_traps(all);
	atomic_store(&apply_done, apply);
	futex_wake_all(&apply_done);
}

/* The check passed (world stopped): write, move threads out of entry windows, note
 * which watched objects still hold a frame, make the new code visible, end the apply. */
static void switch_stopped(struct klp_transition *t, struct slots *all, unsigned apply)
{
	t->commit(t->commit_arg);
	t->rewound = rewind_entry_windows(t, all);
	if (t->nwatch)
		find_watched(t, all);
	if (sync_core)
		syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE, 0, 0);
	end_apply(all, apply);
}

static int handler_in_place(struct klp_transition *t)
{
	struct sigaction cur;

	if (sigaction(stop_sig, NULL, &cur) || !(cur.sa_flags & SA_SIGINFO) ||
	    cur.sa_sigaction != on_stop_signal) {
		snprintf(t->error, sizeof(t->error),
			 "the program replaced the handler of signal %d: set KLPCC_SIGNAL to a "
			 "signal it does not use", stop_sig);
		return 0;
	}
	return 1;
}

int klp_transition_run(struct klp_transition *t)
{
	unsigned apply = atomic_fetch_add(&apply_seq, 1) + 1;
	uint64_t start = klp_now_us(), delay_us = 1000;
	struct busy_note note;
	char err[256];

	if (!atomic_load(&slots)) {
		snprintf(t->error, sizeof(t->error), "the runtime did not start");
		return -2;
	}
	if (!handler_in_place(t))
		return -2;
	merge_busy(t);
	control_tid = klp_gettid();
	atomic_store(&parked_now, 0);
	for (;;) {
		uint64_t now = klp_now_us(), t0 = now;
		struct slots *all;

		t->tries++;
		if (stop_world(now + MIN_STOP_WAIT_US > t->deadline_us ? now + MIN_STOP_WAIT_US
								   : t->deadline_us,
			       err, sizeof(err))) {
			if (klp_now_us() >= t->deadline_us)
				break;
			sleep_us(delay_us);
			delay_us = next_delay(delay_us);
			continue;
		}
		all = atomic_load(&slots);
		now = klp_now_us();
		if (!check_threads(t, all, apply, now < t->deadline_us, &note)) {
			switch_stopped(t, all, apply);
			t->stopped_us = klp_now_us() - t0;
			release_world();
			t->parked = atomic_load(&parked_now);
			atomic_fetch_add(&rewinds, t->rewound);
			return 0;
		}
		if (now >= t->deadline_us) {
			end_apply(all, apply);
			release_world();
			t->parked = atomic_load(&parked_now);
			describe_busy(t, &note, (now - start) / 1000);
			return -1;
		}
		release_world();
		wait_parking(apply, klp_now_us() + delay_us);
		delay_us = next_delay(delay_us);
	}

	/* The world could not be stopped in time.  Stop it once more to take the traps
	 * back; should that fail too they stay: a thread returning through one after the
	 * apply passes straight through. */
	snprintf(t->error, sizeof(t->error), "%s", err);
	if (pending_traps(apply) && !stop_world(klp_now_us() + MIN_STOP_WAIT_US, err, sizeof(err))) {
		end_apply(atomic_load(&slots), apply);
		release_world();
	} else {
		atomic_store(&apply_done, apply);
		futex_wake_all(&apply_done);
	}
	t->parked = atomic_load(&parked_now);
	return -1;
}

unsigned long klp_transition_rewinds(void)
{
	return atomic_load(&rewinds);
}

static _Unwind_Reason_Code count_frame(struct _Unwind_Context *ctx, void *arg)
{
	(void)ctx;
	++*(int *)arg;
	return _URC_NO_REASON;
}

int klp_transition_init(int sig)
{
	struct sigaction sa;
	void *mem;
	int frames = 0;

	stop_sig = sig;
	mem = mmap(NULL, sizeof(struct slots), PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (mem == MAP_FAILED) {
		klp_log("cannot map the thread slots: %s; not listening", strerror(errno));
		return -1;
	}
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_stop_signal;
	sa.sa_flags = SA_SIGINFO | SA_RESTART;
	sigfillset(&sa.sa_mask);
	if (sigaction(sig, &sa, NULL)) {
		klp_log("cannot handle signal %d: %s; not listening", sig, strerror(errno));
		munmap(mem, sizeof(struct slots));
		return -1;
	}
	/* Let the unwinder initialise itself now rather than in a stopped thread. */
	_Unwind_Backtrace(count_frame, &frames);
	if (syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE, 0, 0) == 0)
		sync_core = 1;
	atomic_store(&slots, (struct slots *)mem);
	return 0;
}
