/*
 * A multi-threaded program for the userspace runtime's tests.  Every patchable function
 * returns x + 100000 * version (version 0 here, the patch's number in a patch) and
 * bumps `counter`, so that a result tells which code ran and the counter tells how many
 * calls ran.  The test drives it with one command a line on stdin; each answer is one
 * line on stdout.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define NOPATCH __attribute__((noinline, noclone))
#define STEP 100000L
#define MAX_THREADS 64

/* ---- state the patches reach through refs -------------------------------------------- */

static long counter;
static char journal[8192];
static long journal_len;
static long slow_spins = 20000;

/* ---- the patchable functions ------------------------------------------------------------- */

NOPATCH long value(long x)
{
	__atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED);
	return x;
}

NOPATCH long other(long x)
{
	__atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED);
	return x;
}

NOPATCH long tiny(long x)
{
	return x;
}

NOPATCH long slow(long x)
{
	for (volatile long i = 0; i < slow_spins; i++)
		;
	__atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED);
	return x;
}

/* Results in two registers: rax:rdx, and xmm0:xmm1. */
struct pair {
	long a, b;
};

NOPATCH struct pair pair_fn(long x)
{
	for (volatile long i = 0; i < slow_spins; i++)
		;
	__atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED);
	return (struct pair){ x, ~x };
}

NOPATCH double _Complex cplx_fn(long x)
{
	for (volatile long i = 0; i < slow_spins; i++)
		;
	__atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED);
	return (double)x - (double)x * 1.0i;
}

static int blocker_pipe[2], imm_pipe[2];

NOPATCH long blocker(long x)
{
	char c = 0;

	while (read(blocker_pipe[0], &c, 1) < 0 && errno == EINTR)
		;
	__atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED);
	return x;
}

NOPATCH long imm(long x)
{
	char c = 0;

	while (read(imm_pipe[0], &c, 1) < 0 && errno == EINTR)
		;
	return x;
}

/* fn_0 .. fn_99 for the stopped-window figures */
#define FN(k)                                                      \
	NOPATCH long fn_##k(long x)                                \
	{                                                          \
		__atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED); \
		return x;                                          \
	}
#define FN10(d) FN(d##0) FN(d##1) FN(d##2) FN(d##3) FN(d##4) FN(d##5) FN(d##6) FN(d##7) FN(d##8) FN(d##9)
FN10() FN10(1) FN10(2) FN10(3) FN10(4) FN10(5) FN10(6) FN10(7) FN10(8) FN10(9)
#define P(k) fn_##k,
#define P10(d) P(d##0) P(d##1) P(d##2) P(d##3) P(d##4) P(d##5) P(d##6) P(d##7) P(d##8) P(d##9)
static long (*const fns[100])(long) = { P10() P10(1) P10(2) P10(3) P10(4) P10(5) P10(6) P10(7) P10(8) P10(9) };

static const struct {
	const char *name;
	long (*fn)(long);
} named[] = {
	{ "value", value }, { "other", other }, { "tiny", tiny }, { "slow", slow },
	{ "fn_0", fn_0 },   { "fn_1", fn_1 },   { "fn_99", fn_99 },
};

/* ---- what the test expects (for the load threads) ------------------------------------------ */

/* gen is odd while an apply is in flight: set to the target before, to current after. */
static _Atomic unsigned long gen;
static _Atomic long cur[2], tgt[2];

static _Atomic long calls, checked, violations, unchecked, bad;
static _Atomic int running;

static void check(int f, long x, long r, unsigned long g0, long c0, long t0)
{
	unsigned long g1 = atomic_load(&gen);
	long c1 = atomic_load(&cur[f]), t1 = atomic_load(&tgt[f]), v;

	atomic_fetch_add(&calls, 1);
	if ((r - x) % STEP) {
		atomic_fetch_add(&bad, 1);
		return;
	}
	v = (r - x) / STEP;
	if (g0 == g1 && !(g0 & 1)) {
		atomic_fetch_add(&checked, 1);
		if (v != c0)
			atomic_fetch_add(&violations, 1);
	} else if (g1 - g0 <= 2) {
		atomic_fetch_add(&checked, 1);
		if (v != c0 && v != t0 && v != c1 && v != t1)
			atomic_fetch_add(&violations, 1);
	} else {
		atomic_fetch_add(&unchecked, 1);
	}
}

static void *load_thread(void *arg)
{
	long x = (long)(uintptr_t)arg;

	while (atomic_load(&running)) {
		for (int f = 0; f < 2; f++) {
			unsigned long g0 = atomic_load(&gen);
			long c0 = atomic_load(&cur[f]), t0 = atomic_load(&tgt[f]);
			long r = f ? other(x) : value(x);

			check(f, x, r, g0, c0, t0);
		}
		x = (x + 1) % 1000;
	}
	return NULL;
}

static void *busy_thread(void *arg)
{
	long x = (long)(uintptr_t)arg;

	while (atomic_load(&running)) {
		long r = slow(x);

		atomic_fetch_add(&calls, 1);
		if ((r - x) % STEP)
			atomic_fetch_add(&bad, 1);
	}
	return NULL;
}

/* Checks both halves of each result: a version in the first, the argument in the second. */
static void *regs_thread(void *arg)
{
	long x = (long)(uintptr_t)arg;

	while (atomic_load(&running)) {
		struct pair p = pair_fn(x);
		double _Complex c = cplx_fn(x);
		long re = (long)__real__ c;

		atomic_fetch_add(&calls, 2);
		if ((p.a - x) % STEP || p.b != ~x)
			atomic_fetch_add(&bad, 1);
		if ((re - x) % STEP || __imag__ c != -(double)x)
			atomic_fetch_add(&bad, 1);
		x = (x + 1) % 1000;
	}
	return NULL;
}

static _Atomic long tiny_last = -1;
static _Atomic pid_t tiny_tid;

static void *tiny_thread(void *arg)
{
	long x = 0;

	(void)arg;
	atomic_store(&tiny_tid, (pid_t)syscall(SYS_gettid));
	while (atomic_load(&running)) {
		long r = tiny(x);

		atomic_fetch_add(&calls, 1);
		if ((r - x) % STEP || r < x || (r - x) / STEP > 50)
			atomic_fetch_add(&bad, 1);
		atomic_store(&tiny_last, (r - x) / STEP);
		x = (x + 1) % 1000;
	}
	return NULL;
}

static int fn_count = 1;

static void *fn_thread(void *arg)
{
	long x = (long)(uintptr_t)arg;

	while (atomic_load(&running)) {
		for (int i = 0; i < fn_count; i++)
			fns[i](x);
		atomic_fetch_add(&calls, fn_count);
	}
	return NULL;
}

static int idle_pipe[2] = { -1, -1 };

static void *idle_thread(void *arg)
{
	char c;

	(void)arg;
	while (read(idle_pipe[0], &c, 1) < 0 && errno == EINTR)
		;
	return NULL;
}

static pthread_t threads[MAX_THREADS];
static int nthreads;

static void start(void *(*fn)(void *), int n)
{
	atomic_store(&running, 1);
	for (int i = 0; i < n && nthreads < MAX_THREADS; i++)
		pthread_create(&threads[nthreads++], NULL, fn, (void *)(uintptr_t)(i * 37 % 1000));
}

static void stop_all(void)
{
	atomic_store(&running, 0);
	if (idle_pipe[1] >= 0) {
		close(idle_pipe[1]);
		idle_pipe[1] = -1;
	}
	for (int i = 0; i < nthreads; i++)
		pthread_join(threads[i], NULL);
	nthreads = 0;
	if (idle_pipe[0] >= 0) {
		close(idle_pipe[0]);
		idle_pipe[0] = -1;
	}
}

/* ---- threads coming and going ------------------------------------------------------------------ */

static void *short_lived(void *arg)
{
	long x = (long)(uintptr_t)arg;

	for (int i = 0; i < 10; i++) {
		long r = value(x);

		atomic_fetch_add(&calls, 1);
		if ((r - x) % STEP)
			atomic_fetch_add(&bad, 1);
	}
	return NULL;
}

static _Atomic long spawned;

static void *churn_thread(void *arg)
{
	(void)arg;
	while (atomic_load(&running)) {
		pthread_t t;

		if (pthread_create(&t, NULL, short_lived, (void *)(uintptr_t)7))
			continue;
		pthread_join(t, NULL);
		atomic_fetch_add(&spawned, 1);
	}
	return NULL;
}

/* ---- a thread with every signal blocked --------------------------------------------------------- */

static int sigblock_pipe[2] = { -1, -1 };
static pthread_t sigblocked;
static _Atomic int sigblocked_ready;

/* Created with every signal blocked (the creator's mask at pthread_create). */
static void *sigblocked_thread(void *arg)
{
	sigset_t all;
	char c;

	(void)arg;
	atomic_store(&sigblocked_ready, 1);
	while (read(sigblock_pipe[0], &c, 1) < 0 && errno == EINTR)
		;
	sigemptyset(&all);
	pthread_sigmask(SIG_SETMASK, &all, NULL); /* pending signals are handled here */
	return NULL;
}

/* ---- code without unwind information ------------------------------------------------------------- */

__attribute__((used)) volatile int nocfi_run, nocfi_inside;
void nocfi_spin(void);
__asm__(".text\n"
	".globl nocfi_spin\n"
	".type nocfi_spin, @function\n"
	"nocfi_spin:\n"
	"	push %rbp\n"
	"	mov %rsp, %rbp\n"
	"	movl $1, nocfi_inside(%rip)\n"
	"1:	pause\n"
	"	cmpl $0, nocfi_run(%rip)\n"
	"	jne 1b\n"
	"	pop %rbp\n"
	"	ret\n"
	".size nocfi_spin, .-nocfi_spin\n");

static pthread_t nocfi;

static void *nocfi_thread(void *arg)
{
	(void)arg;
	nocfi_spin();
	return NULL;
}

/* ---- a signal handler that blocks ------------------------------------------------------------------ */

static int handler_pipe[2] = { -1, -1 };

static void on_sigusr1(int sig)
{
	char c;

	(void)sig;
	while (read(handler_pipe[0], &c, 1) < 0 && errno == EINTR)
		;
}

/* ---- threads blocked inside a function -------------------------------------------------------- */

struct waiter {
	pthread_t thread;
	long (*fn)(long);
	long arg;
	_Atomic long last;	/* the last call's result */
	_Atomic int done;	/* calls returned */
	int rounds;		/* calls to make */
	_Atomic pid_t tid;
};

static struct waiter blockw = { .fn = blocker }, immw = { .fn = imm };

static void *waiter_thread(void *arg)
{
	struct waiter *w = arg;

	atomic_store(&w->tid, (pid_t)syscall(SYS_gettid));
	for (int i = 0; i < w->rounds; i++) {
		atomic_store(&w->last, w->fn(w->arg));
		atomic_fetch_add(&w->done, 1);
	}
	return NULL;
}

/* A thread calling w->fn `rounds` times, each call blocked until `unblock`. */
static pid_t wait_inside(struct waiter *w, long x, int rounds)
{
	w->arg = x;
	w->rounds = rounds;
	atomic_store(&w->last, -1);
	atomic_store(&w->done, 0);
	atomic_store(&w->tid, 0);
	pthread_create(&w->thread, NULL, waiter_thread, w);
	while (!atomic_load(&w->tid))
		usleep(100);
	return atomic_load(&w->tid);
}

/* ---- measurements --------------------------------------------------------------------------------- */

static double now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static double time_calls(long (*fn)(long), long n)
{
	long (*volatile f)(long) = fn;
	double t0 = now_ns();
	long acc = 0;

	for (long i = 0; i < n; i++)
		acc += f(i);
	__asm__ volatile("" : : "r"(acc));
	return (now_ns() - t0) / (double)n;
}

static long (*lookup(const char *name))(long)
{
	for (size_t i = 0; i < sizeof(named) / sizeof(named[0]); i++)
		if (!strcmp(named[i].name, name))
			return named[i].fn;
	return NULL;
}

/* ---- commands --------------------------------------------------------------------------------------- */

static void command(char *line)
{
	char name[256], path[4096];
	long a, b;
	int n;

	if (sscanf(line, "load %d", &n) == 1) {
		start(load_thread, n);
		printf("ok\n");
	} else if (sscanf(line, "busy %d %ld", &n, &a) == 2) {
		slow_spins = a;
		start(busy_thread, n);
		printf("ok\n");
	} else if (sscanf(line, "regs %d %ld", &n, &a) == 2) {
		slow_spins = a;
		start(regs_thread, n);
		printf("ok\n");
	} else if (!strcmp(line, "tinyloop")) {
		start(tiny_thread, 1);
		while (!atomic_load(&tiny_tid))
			usleep(100);
		printf("%d\n", (int)atomic_load(&tiny_tid));
	} else if (!strcmp(line, "tinylast")) {
		printf("%ld\n", atomic_load(&tiny_last));
	} else if (sscanf(line, "fnbusy %d %d", &n, &fn_count) == 2) {
		start(fn_thread, n);
		printf("ok\n");
	} else if (sscanf(line, "idle %d", &n) == 1) {
		if (idle_pipe[0] < 0 && pipe(idle_pipe))
			abort();
		start(idle_thread, n);
		printf("ok\n");
	} else if (sscanf(line, "churn %d", &n) == 1) {
		start(churn_thread, n);
		printf("ok\n");
	} else if (!strcmp(line, "spawned")) {
		printf("%ld\n", atomic_load(&spawned));
	} else if (!strcmp(line, "sigblocked")) {
		sigset_t all, old;

		sigfillset(&all);
		pthread_sigmask(SIG_SETMASK, &all, &old);
		if (pipe(sigblock_pipe) || pthread_create(&sigblocked, NULL, sigblocked_thread, NULL))
			abort();
		pthread_sigmask(SIG_SETMASK, &old, NULL);
		while (!atomic_load(&sigblocked_ready))
			usleep(100);
		printf("ok\n");
	} else if (!strcmp(line, "sigunblock")) {
		if (write(sigblock_pipe[1], "x", 1) != 1)
			abort();
		pthread_join(sigblocked, NULL);
		printf("ok\n");
	} else if (!strcmp(line, "nocfi")) {
		nocfi_run = 1;
		pthread_create(&nocfi, NULL, nocfi_thread, NULL);
		while (!nocfi_inside)
			usleep(100);
		printf("ok\n");
	} else if (!strcmp(line, "nocfi_stop")) {
		nocfi_run = 0;
		pthread_join(nocfi, NULL);
		printf("ok\n");
	} else if (!strcmp(line, "handler_unblock")) {
		if (write(handler_pipe[1], "x", 1) != 1)
			abort();
		printf("ok\n");
	} else if (!strcmp(line, "stop")) {
		stop_all();
		printf("ok\n");
	} else if (sscanf(line, "target %ld %ld", &a, &b) == 2) {
		atomic_store(&tgt[0], a);
		atomic_store(&tgt[1], b);
		atomic_fetch_add(&gen, 1);
		printf("ok\n");
	} else if (sscanf(line, "current %ld %ld", &a, &b) == 2) {
		atomic_store(&cur[0], a);
		atomic_store(&cur[1], b);
		atomic_fetch_add(&gen, 1);
		printf("ok\n");
	} else if (!strcmp(line, "stats")) {
		printf("calls=%ld checked=%ld violations=%ld unchecked=%ld bad=%ld counter=%ld\n",
		       atomic_load(&calls), atomic_load(&checked), atomic_load(&violations),
		       atomic_load(&unchecked), atomic_load(&bad),
		       __atomic_load_n(&counter, __ATOMIC_RELAXED));
	} else if (sscanf(line, "call %255s %ld", name, &a) == 2) {
		long (*fn)(long) = lookup(name);

		if (fn)
			printf("%ld\n", fn(a));
		else
			printf("unknown\n");
	} else if (sscanf(line, "block %ld %d", &a, &n) == 2) {
		printf("%d\n", (int)wait_inside(&blockw, a, n));
	} else if (sscanf(line, "immblock %ld %d", &a, &n) == 2) {
		printf("%d\n", (int)wait_inside(&immw, a, n));
	} else if (sscanf(line, "unblock %255s", name) == 1) {
		int fd = strcmp(name, "imm") ? blocker_pipe[1] : imm_pipe[1];

		if (write(fd, "x", 1) != 1)
			abort();
		printf("ok\n");
	} else if (sscanf(line, "result %255s", name) == 1) {
		struct waiter *w = strcmp(name, "imm") ? &blockw : &immw;

		printf("%d %ld\n", atomic_load(&w->done), atomic_load(&w->last));
	} else if (sscanf(line, "join %255s", name) == 1) {
		struct waiter *w = strcmp(name, "imm") ? &blockw : &immw;

		pthread_join(w->thread, NULL);
		printf("%d %ld\n", atomic_load(&w->done), atomic_load(&w->last));
	} else if (!strcmp(line, "journal")) {
		for (long i = 0; i < journal_len; i++)
			putchar(journal[i] == '\n' ? '|' : journal[i]);
		putchar('\n');
	} else if (!strcmp(line, "counter")) {
		printf("%ld\n", __atomic_load_n(&counter, __ATOMIC_RELAXED));
	} else if (sscanf(line, "timecall %255s %ld", name, &a) == 2) {
		long (*fn)(long) = lookup(name);

		printf("%.3f\n", fn ? time_calls(fn, a) : -1.0);
	} else if (sscanf(line, "timedirect %4095s %255s %ld", path, name, &a) == 3) {
		void *h = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
		long (*fn)(long) = h ? (long (*)(long))dlsym(h, name) : NULL;

		printf("%.3f\n", fn ? time_calls(fn, a) : -1.0);
		if (h)
			dlclose(h);
	} else {
		printf("unknown command\n");
	}
}

int main(void)
{
	char line[8192];

	setvbuf(stdout, NULL, _IOLBF, 0);
	if (pipe(blocker_pipe) || pipe(imm_pipe) || pipe(handler_pipe))
		return 1;
	signal(SIGUSR1, on_sigusr1);
	printf("ready %d\n", (int)getpid());
	while (fgets(line, sizeof(line), stdin)) {
		line[strcspn(line, "\n")] = 0;
		if (!strcmp(line, "quit"))
			break;
		command(line);
	}
	stop_all();
	return 0;
}
