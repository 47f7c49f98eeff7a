// SPDX-License-Identifier: MIT
/*
 * util.c - small helpers every part uses: the log line, the monotonic clock, the
 * thread id, and futex waits and wakes (safe in a signal handler: system calls only).
 */
#define _GNU_SOURCE
#include <limits.h>
#include <linux/futex.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

void klp_log(const char *fmt, ...)
{
	char buf[1024];
	va_list ap;
	int n;

	memcpy(buf, "klpcc: ", 7);
	va_start(ap, fmt);
	n = vsnprintf(buf + 7, sizeof(buf) - 8, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	n += 7;
	/* a cut message ends where vsnprintf put its NUL (buf[sizeof(buf) - 2]) */
	if (n > (int)sizeof(buf) - 2)
		n = sizeof(buf) - 2;
	buf[n++] = '\n';
	if (write(STDERR_FILENO, buf, n) < 0)
		return;
}

uint64_t klp_now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

pid_t klp_gettid(void)
{
	return (pid_t)syscall(SYS_gettid);
}

static long futex(_Atomic unsigned *word, int op, unsigned val, const struct timespec *ts)
{
	return syscall(SYS_futex, word, op, val, ts, NULL, 0);
}

void klp_futex_wait(_Atomic unsigned *word, unsigned val)
{
	futex(word, FUTEX_WAIT_PRIVATE, val, NULL);
}

void klp_futex_wait_us(_Atomic unsigned *word, unsigned val, uint64_t us)
{
	struct timespec ts = { (time_t)(us / 1000000u), (long)(us % 1000000u) * 1000 };

	futex(word, FUTEX_WAIT_PRIVATE, val, &ts);
}

void klp_futex_wake_one(_Atomic unsigned *word)
{
	futex(word, FUTEX_WAKE_PRIVATE, 1, NULL);
}

void klp_futex_wake_all(_Atomic unsigned *word)
{
	futex(word, FUTEX_WAKE_PRIVATE, INT_MAX, NULL);
}
