// SPDX-License-Identifier: MIT
/*
 * start.c - the runtime's start, as the library's constructor: find the program, pick
 * the stop signal (KLPCC_SIGNAL), install its handler, apply the patches installed for
 * the program and its libraries (store.c) so that they are in force before main, and
 * start the control thread.  The constructor's thread applies them itself: it is the
 * thread that stops the others (a stop from the control thread would find it inside
 * the dynamic linker's start code, which has no unwind information), and a runtime
 * loaded by dlopen may load patch objects from its constructor (the loader's lock is
 * the thread's own).  If any of it fails the runtime logs why and the program runs on
 * unpatchable.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define STORE_TIMEOUT_MS 10000ul /* applying the patches installed, at start */

/* KLPCC_SIGNAL: a number, or SIGRTMIN+N / RTMIN+N. */
static int stop_signal(void)
{
	const char *s = getenv("KLPCC_SIGNAL");
	char *end;
	long base = 0, n;

	if (!s || !*s)
		return SIGRTMIN + 7;
	if (!strncmp(s, "SIG", 3))
		s += 3;
	if (!strncmp(s, "RTMIN", 5)) {
		base = SIGRTMIN;
		s += 5;
		if (!*s)
			return (int)base;
		if (*s != '+')
			return -1;
		s++;
	}
	errno = 0;
	n = strtol(s, &end, 10);
	if (errno || *end || end == s || n < 0)
		return -1;
	n += base;
	if (n < 1 || n > SIGRTMAX || n == SIGKILL || n == SIGSTOP)
		return -1;
	return (int)n;
}

__attribute__((constructor)) static void klp_start(void)
{
	klp_program_identify();
	klp_prog.stop_signal = stop_signal();
	if (klp_prog.stop_signal < 0) {
		klp_log("KLPCC_SIGNAL=%s is not a usable signal; not listening",
			getenv("KLPCC_SIGNAL"));
		return;
	}
	if (klp_transition_init(klp_prog.stop_signal))
		return;
	klp_store_apply(STORE_TIMEOUT_MS);
	klp_hold_libraries();
	klp_control_start();
}
