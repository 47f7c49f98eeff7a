// SPDX-License-Identifier: MIT
/*
 * stop.c - stopping the world.  The control thread sends every other thread a real-time
 * signal; each thread records, from its own signal handler, the interrupted registers
 * and its stack (the unwind tables, _Unwind_Backtrace) into a preallocated slot and
 * waits on a futex until the control thread releases the world.  Threads that appear
 * while the stop is in progress are signalled too; threads that exit are noticed.
 *
 * While the world is stopped neither the handler nor the control thread allocates,
 * locks or calls anything but system calls and the unwinder.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <unwind.h>

#include "internal.h"

static struct klp_slots *_Atomic slots;
static _Atomic unsigned stop_seq;	/* odd while a stop is in progress */
static _Atomic unsigned arrivals;	/* futex: bumped by every thread that stops */
static pid_t control_tid;
static int stop_sig;

/* ---- in the stopped thread ------------------------------------------------------ */

struct unwinding {
	struct klp_slot *s;
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
	u->s->frames[u->n] = (struct klp_frame){ ip, _Unwind_GetCFA(ctx) };
	u->s->before[u->n] = (unsigned char)before;
	u->n++;
	return _URC_NO_REASON;
}

static void record_stack(struct klp_slot *s, ucontext_t *uc)
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

static struct klp_slot *own_slot(unsigned seq)
{
	struct klp_slots *all = atomic_load(&slots);
	pid_t tid = klp_gettid();
	int n = atomic_load(&all->n);

	for (int i = 0; i < n; i++) {
		struct klp_slot *s = &all->v[i];

		if (atomic_load(&s->tid) == tid && atomic_load(&s->seq) == seq &&
		    atomic_load(&s->state) == KLP_THREAD_SIGNALLED)
			return s;
	}
	return NULL;
}

static void on_stop_signal(int sig, siginfo_t *si, void *ucv)
{
	int saved_errno = errno;
	unsigned seq = atomic_load(&stop_seq);
	struct klp_slot *s;

	(void)sig;
	if (!(seq & 1) || si->si_code != SI_TKILL || si->si_pid != klp_prog.pid)
		goto out;
	s = own_slot(seq);
	if (!s)
		goto out;
	record_stack(s, ucv);
	atomic_store(&s->state, KLP_THREAD_STOPPED);
	atomic_fetch_add(&arrivals, 1);
	klp_futex_wake_one(&arrivals);
	while (atomic_load(&stop_seq) == seq)
		klp_futex_wait(&stop_seq, seq);
	/* The control thread may have moved our saved instruction pointer (uc) meanwhile. */
out:
	errno = saved_errno;
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

static int known(struct klp_slots *all, int n, pid_t tid)
{
	for (int i = 0; i < n; i++)
		if (atomic_load(&all->v[i].tid) == tid)
			return 1;
	return 0;
}

/* Signal every thread not signalled yet; returns how many were added, -1 if too many. */
static int signal_new_threads(struct klp_slots *all, unsigned seq)
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
			struct klp_slot *s = &all->v[n];

			atomic_store(&s->state, KLP_THREAD_SIGNALLED);
			atomic_store(&s->seq, seq);
			atomic_store(&s->tid, tid);
			s->nframes = 0;
			s->reliable = 0;
			atomic_store(&all->n, n + 1);
			if (syscall(SYS_tgkill, klp_prog.pid, tid, stop_sig) && errno == ESRCH)
				atomic_store(&s->state, KLP_THREAD_GONE);
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

void klp_release_world(void)
{
	atomic_fetch_add(&stop_seq, 1);
	klp_futex_wake_all(&stop_seq);
}

/* Wait until every signalled thread stopped or is gone; -1 (and *late) if one is late. */
static int wait_arrivals(struct klp_slots *all, uint64_t limit, pid_t *late)
{
	uint64_t last_probe = klp_now_us();

	for (;;) {
		unsigned seen = atomic_load(&arrivals);
		int n = atomic_load(&all->n), waiting = -1;
		uint64_t now;

		for (int i = 0; i < n && waiting < 0; i++)
			if (atomic_load(&all->v[i].state) == KLP_THREAD_SIGNALLED)
				waiting = i;
		if (waiting < 0)
			return 0;
		now = klp_now_us();
		if (now - last_probe >= 1000) {
			last_probe = now;
			for (int i = 0; i < n; i++) {
				struct klp_slot *s = &all->v[i];

				if (atomic_load(&s->state) == KLP_THREAD_SIGNALLED &&
				    thread_gone(atomic_load(&s->tid)))
					atomic_store(&s->state, KLP_THREAD_GONE);
			}
			continue;
		}
		if (now >= limit) {
			*late = atomic_load(&all->v[waiting].tid);
			return -1;
		}
		klp_futex_wait_us(&arrivals, seen, 1000);
	}
}

static struct klp_slots *map_slots(void)
{
	void *mem = mmap(NULL, sizeof(struct klp_slots), PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);

	return mem == MAP_FAILED ? NULL : mem;
}

/* A stop given up: a thread signalled may still run its handler later and write into
 * its slot, so the next stop uses fresh slots (the old ones stay mapped). */
static void abandon_stop(void)
{
	struct klp_slots *fresh;

	klp_release_world();
	fresh = map_slots();
	if (fresh)
		atomic_store(&slots, fresh);
}

void klp_stop_forked(void)
{
	/* Forked while a thread was signalled for a stop (it handles the signal after fork
	 * returns): the child's copy says a stop is in progress; it is not. */
	if (atomic_load(&stop_seq) & 1)
		atomic_fetch_add(&stop_seq, 1);
}

int klp_stop_world(uint64_t limit, char *err, size_t errlen)
{
	struct klp_slots *all = atomic_load(&slots);
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

struct klp_slots *klp_stopped_threads(void)
{
	return atomic_load(&slots);
}

int klp_stop_ready(char *err, size_t errlen)
{
	struct sigaction cur;

	if (!atomic_load(&slots)) {
		snprintf(err, errlen, "the runtime did not start");
		return -1;
	}
	if (sigaction(stop_sig, NULL, &cur) || !(cur.sa_flags & SA_SIGINFO) ||
	    cur.sa_sigaction != on_stop_signal) {
		snprintf(err, errlen,
			 "the program replaced the handler of signal %d: set KLPCC_SIGNAL to a "
			 "signal it does not use", stop_sig);
		return -1;
	}
	control_tid = klp_gettid();
	return 0;
}

static _Unwind_Reason_Code count_frame(struct _Unwind_Context *ctx, void *arg)
{
	(void)ctx;
	++*(int *)arg;
	return _URC_NO_REASON;
}

int klp_stop_init(int sig)
{
	struct sigaction sa;
	struct klp_slots *mem;
	int frames = 0;

	stop_sig = sig;
	mem = map_slots();
	if (!mem) {
		klp_log("cannot map the thread slots: %s; not listening", strerror(errno));
		return -1;
	}
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_stop_signal;
	sa.sa_flags = SA_SIGINFO | SA_RESTART;
	sigfillset(&sa.sa_mask);
	if (sigaction(sig, &sa, NULL)) {
		klp_log("cannot handle signal %d: %s; not listening", sig, strerror(errno));
		munmap(mem, sizeof(struct klp_slots));
		return -1;
	}
	/* Let the unwinder initialise itself now rather than in a stopped thread. */
	_Unwind_Backtrace(count_frame, &frames);
	atomic_store(&slots, mem);
	return 0;
}
