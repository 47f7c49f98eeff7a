/* SPDX-License-Identifier: MIT */
/*
 * internal.h - what the parts of libklpcc.so share.  Nothing here is part of the ABI;
 * the ABI is klpcc.h.
 *
 *   start.c       the constructor: the runtime's start
 *   hooks.c       dlopen and dlclose: libraries that come and go
 *   store.c       the patches installed for the program and libraries (klpcc install)
 *   util.c        logging, the clock, thread ids, futexes
 *   program.c     the loaded objects: program and libraries, build-ids, segments
 *   control.c     the control socket and its one-line protocol
 *   json.c        a small JSON writer for the answers
 *   patch.c       the apply/disable transaction, the patches loaded, their callbacks
 *   transition.c  the switch: the stack check, the retries with backoff, the timeout
 *   stop.c        stopping the world: the signal, each thread's stack in its slot
 *   parking.c     parking busy threads: traps on return addresses, their records
 *   park.S        the park trampoline a busy thread returns into
 *   redirect.c    entry sites, the five bytes written, far-jump trampolines
 *   state.c       klpcc_get_state / klpcc_get_prev_state, the states' compatibility
 *   shadow.c      shadow variables
 */
#ifndef KLPCC_INTERNAL_H
#define KLPCC_INTERNAL_H

#include <limits.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <ucontext.h>

#include "klpcc.h"

#define KLP_API __attribute__((visibility("default")))
#define KLP_PRINTF(a, b) __attribute__((format(printf, a, b)))

#define KLP_MAX_FRAMES 256	/* frames recorded per thread while stopped */
#define KLP_MAX_THREADS 2048	/* threads a stop can hold */
#define KLP_MAX_SEGS 16		/* PT_LOAD segments kept per object */
#define KLP_MAX_INSTALLED 64	/* patches installed at once (over disjoint objects) */

struct klp_range {
	uintptr_t lo, hi;	/* [lo, hi) */
};

/* ---- util.c ------------------------------------------------------------------ */

void klp_log(const char *fmt, ...) KLP_PRINTF(1, 2);
uint64_t klp_now_us(void);
pid_t klp_gettid(void);
/* FUTEX_WAIT (while *word == val; with a timeout in microseconds) and FUTEX_WAKE. */
void klp_futex_wait(_Atomic unsigned *word, unsigned val);
void klp_futex_wait_us(_Atomic unsigned *word, unsigned val, uint64_t us);
void klp_futex_wake_one(_Atomic unsigned *word);
void klp_futex_wake_all(_Atomic unsigned *word);

/* ---- program.c --------------------------------------------------------------- */

/* A loaded object that patches may change: the program or a shared library. */
struct klp_module {
	uintptr_t bias;			/* dlpi_addr */
	char path[PATH_MAX];		/* dlpi_name ("" for the program) */
	char build_id[129];		/* lowercase hex, "" if none */
	struct klp_range text[KLP_MAX_SEGS];	/* executable PT_LOADs */
	int text_prot[KLP_MAX_SEGS];	/* their PROT_* */
	int ntext;
	struct klp_range load[KLP_MAX_SEGS];	/* every PT_LOAD */
	int nload;
};

struct klp_program {
	pid_t pid;
	struct klp_module main;		/* the program */
	int stop_signal;		/* set by start.c */
};

extern struct klp_program klp_prog;

/* Fill klp_prog (but its stop_signal) from the main program's headers. */
void klp_program_identify(void);
/* Call fn for every loaded object, the program first, until it returns non-zero (which
 * is returned).  Takes the loader's list lock: never while the world is stopped. */
int klp_modules_each(int (*fn)(const struct klp_module *, void *), void *arg);
/* The first loaded object with this build-id: 0, or -1 if none. */
int klp_module_find(const char *build_id, struct klp_module *m);
/* The index of the object's executable segment holding [lo, hi), or -1. */
int klp_module_text(const struct klp_module *m, uintptr_t lo, uintptr_t hi);
/* Whether [lo, hi) lies inside one PT_LOAD of the object. */
int klp_module_holds(const struct klp_module *m, uintptr_t lo, uintptr_t hi);
/* A loaded object's segments, found by its dlpi_addr and dlpi_name. */
struct klp_object_map {
	struct klp_range seg[KLP_MAX_SEGS];	/* PT_LOAD */
	int prot[KLP_MAX_SEGS];
	int nseg;
	struct klp_range relro;			/* PT_GNU_RELRO: read-only once loaded */
};

int klp_object_map(uintptr_t base, const char *name, struct klp_object_map *map);
/* Whether [lo, hi) lies in one segment with at least `prot` (writable: outside RELRO). */
int klp_object_holds(const struct klp_object_map *m, uintptr_t lo, uintptr_t hi, int prot);

/* ---- json.c ------------------------------------------------------------------- */

struct klp_json {
	char *buf;
	size_t len, cap;
	int failed;		/* out of memory: the text is unusable */
};

void klp_json_raw(struct klp_json *j, const char *s);
void klp_json_fmt(struct klp_json *j, const char *fmt, ...) KLP_PRINTF(2, 3);
void klp_json_str(struct klp_json *j, const char *s);	/* a quoted, escaped string or null */
void klp_json_free(struct klp_json *j);

/* ---- control.c ------------------------------------------------------------------ */

void klp_control_start(void);
/* Have the control thread look at the objects loaded (after a dlopen or dlclose) and
 * wait until it did; nothing in a thread that cannot wait for it. */
void klp_control_sync(void);

/* ---- hooks.c ------------------------------------------------------------------------ */

/* The dynamic linker's dlopen and dlclose (the runtime's own loads go through these;
 * the program's through the runtime's dlopen and dlclose, which sync afterwards). */
void *klp_real_dlopen(const char *file, int mode);
int klp_real_dlclose(void *handle);

/* ---- store.c ------------------------------------------------------------------------ */

/* Apply the patches installed (klpcc install) for loaded objects no installed patch
 * changes yet, once per object. */
void klp_store_apply(unsigned long timeout_ms);

/* ---- patch.c ---------------------------------------------------------------------- */

/* What an apply or a disable answers. */
struct klp_outcome {
	const char *step;	/* NULL on success */
	char error[512];
	char *patch;
	struct klp_json replaced, unloaded, nops;	/* comma-separated JSON strings */
	struct klp_json pending;	/* functions whose object is not loaded */
	unsigned tries, parked;
	uint64_t stopped_us, total_us;
};

/* Load and install the patch object ``path`` (read from ``fd`` when it is not -1). */
void klp_apply(const char *path, int fd, unsigned long timeout_ms, struct klp_outcome *out);
/* Disable the installed patch called `name` (NULL: the only one installed). */
void klp_disable(const char *name, unsigned long timeout_ms, struct klp_outcome *out);
/* After objects came or went: forget the sites of objects unloaded, switch those of
 * objects loaded since to the installed patches' code. */
void klp_objects_sync(unsigned long timeout_ms);
/* Whether an installed patch changes the object with this build-id. */
int klp_covered(const char *build_id);
/* From the control thread's start on, libraries are held while they are written: before,
 * only the constructor's thread runs the loader, and holding a library whose constructor
 * has not run yet would run it. */
void klp_hold_libraries(void);
void klp_status(struct klp_json *j);
void klp_outcome_free(struct klp_outcome *out);

/* ---- state.c ------------------------------------------------------------------------ */

/* The states a patch carries (one array per loaded patch, owned by patch.c). */
struct klp_states {
	struct klpcc_state *v;
	unsigned n;
};

struct klpcc_state *klp_states_find(const struct klp_states *s, unsigned long id);
/* Whether `patch` may replace the patch installed (its states `prev`, its name): as the
 * kernel's klp_is_patch_compatible, every state installed must be kept at the same
 * version or a later one.  If not, 0 and why in err. */
int klp_is_patch_compatible(const struct klpcc_patch *patch, const struct klp_states *prev,
			    const char *prev_name, char *err, size_t errlen);
/* A patch's states once it is unloaded: freed when no klpcc_get_state may still read them. */
void klp_states_retire(struct klp_states *s);
/* Whose states klpcc_get_state / klpcc_get_prev_state answer from. */
/* `s` is installed, in place of `replaces` (NULL: beside the others); s NULL with
 * `replaces`: it is no longer installed.  -1 when KLP_MAX_INSTALLED are installed.
 * Only atomic stores: called while the world is stopped. */
int klp_state_install(const struct klp_states *s, const struct klp_states *replaces);
void klp_state_set_context(const struct klp_states *cur, const struct klp_states *prev);

/* ---- redirect.c ---------------------------------------------------------------------- */

/* One function of a loaded object that the runtime has redirected at some point. */
struct klp_site {
	uintptr_t entry;
	unsigned long size;
	char *name;
	int prot;				/* its text segment's PROT_* */
	struct klp_range span;			/* its object's PT_LOADs: slots are near it */
	unsigned char orig[KLPCC_ENTRY_BYTES];	/* the five NOPs */
	unsigned char cur[KLPCC_ENTRY_BYTES];	/* what the entry holds now */
	uintptr_t slot;				/* far-jump slot, 0 until needed */
	uintptr_t target;			/* where it jumps now, 0 = the original */
	const void *owner;			/* the patch the target belongs to */
	const char *owner_name;
};

/* One write of a switch, prepared before the world stops. */
struct klp_write {
	struct klp_site *site;
	uintptr_t target;			/* 0 = restore the original */
	unsigned char bytes[KLPCC_ENTRY_BYTES];
	uintptr_t slot_target;			/* stored in the site's slot if it has one */
	const void *owner;
	const char *owner_name;
};

/* The site at `entry`: NULL and an error if the entry holds bytes the runtime did not
 * write (neither the five NOPs nor its own jump). */
struct klp_site *klp_site_lookup(const struct klp_module *m, uintptr_t entry, unsigned long size,
				 const char *name, char *err, size_t errlen);
/* An object was unloaded: forget every site in [lo, hi) (their slots stay unused),
 * after unref() let go of each. */
void klp_sites_forget_range(uintptr_t lo, uintptr_t hi, void (*unref)(struct klp_site *));
struct klp_site *klp_site_find(uintptr_t entry);
/* Visit every site (for status). */
void klp_sites_each(void (*fn)(const struct klp_site *, void *), void *arg);
int klp_write_prepare(struct klp_write *w, struct klp_site *site, uintptr_t target,
		      char *err, size_t errlen);
/* Make the pages the writes touch writable (before the stop) and executable again after. */
int klp_writes_unprotect(const struct klp_write *w, size_t n, char *err, size_t errlen);
void klp_writes_protect(const struct klp_write *w, size_t n);
/* While stopped: store every write (no allocation, no lock). */
void klp_writes_commit(struct klp_write *w, size_t n);

/* ---- transition.c -------------------------------------------------------------------- */

/* A range no thread may be in when the switch happens (a function being switched). */
struct klp_busy_range {
	uintptr_t lo, hi;
	const char *name;	/* the program's function */
	const char *what;	/* "the original", "the installed copy", "the new copy" */
	const char *why;	/* why the patch changes it (the descriptor's reason), or NULL */
};

struct klp_transition {
	/* in */
	struct klp_busy_range *busy;	/* sorted and merged by klp_transition_run */
	size_t nbusy;
	const uintptr_t *entries;	/* entries written by the switch, sorted */
	size_t nentries;
	const struct klp_range *watch;	/* ranges of objects that may be unloaded */
	const int *watch_group;
	size_t nwatch;
	unsigned char *watch_hit;	/* per group: some frame lay inside at the final stop */
	void (*commit)(void *arg);	/* the switch, called while stopped */
	void *commit_arg;
	uint64_t deadline_us;
	/* out */
	unsigned tries, parked, rewound;
	uint64_t stopped_us;
	char error[512];
};

int klp_transition_init(int sig);
/* 0: switched; -1: a thread stayed (t->error); -2: internal error (t->error). */
int klp_transition_run(struct klp_transition *t);
unsigned long klp_transition_rewinds(void);

/* ---- stop.c ---------------------------------------------------------------------------- */

/* Where a thread signalled by a stop is. */
enum klp_thread_state {
	KLP_THREAD_SIGNALLED,	/* signalled, not stopped yet */
	KLP_THREAD_STOPPED,	/* waiting in the handler, its stack recorded in its slot */
	KLP_THREAD_GONE,	/* exited (or a zombie) before it stopped */
};

struct klp_frame {
	uintptr_t ip;	/* as the unwinder reports it: a return address but for frame 0 */
	uintptr_t sp;	/* the frame's stack pointer (its callee's CFA) */
};

/* One thread of a stop, written by the thread itself in the stop signal's handler. */
struct klp_slot {
	_Atomic pid_t tid;
	_Atomic unsigned seq;		/* the stop it belongs to */
	_Atomic enum klp_thread_state state;
	ucontext_t *uc;
	uintptr_t ip;			/* the interrupted instruction */
	int nframes;
	int reliable;			/* the unwinder reached the outermost frame */
	struct klp_frame frames[KLP_MAX_FRAMES];
	unsigned char before[KLP_MAX_FRAMES];	/* ip is the faulting insn, not a return */
};

struct klp_slots {
	_Atomic int n;
	struct klp_slot v[KLP_MAX_THREADS];
};

/* The pc within frame k's function (a return address may be the next function's). */
static inline uintptr_t klp_frame_pc(const struct klp_slot *s, int k)
{
	return s->frames[k].ip - !s->before[k];
}

/* Install the stop signal's handler, map the slots. */
int klp_stop_init(int sig);
/* In the control thread before an apply: 0 if the runtime started and the stop signal
 * still has its handler; otherwise -1 and why in err. */
int klp_stop_ready(char *err, size_t errlen);
/* Stop every thread but this one before `limit`.  0 when stopped (the threads are in
 * klp_stopped_threads()); otherwise the world runs again and err says why. */
int klp_stop_world(uint64_t limit, char *err, size_t errlen);
struct klp_slots *klp_stopped_threads(void);
void klp_release_world(void);

/* ---- parking.c ------------------------------------------------------------------------- */

/* A new apply: its number, which its traps carry; no thread parked for it yet. */
unsigned klp_park_begin(void);
/* Threads of the current apply that parked. */
unsigned klp_parked(void);
/* Whether pc lies in the trampoline before the return address is stored. */
int klp_park_in_transit(uintptr_t pc);
/* World stopped: make frame `outer` (the thread's outermost affected frame) return into
 * the trampoline; 1 if it does now. */
int klp_park_trap(const struct klp_slot *s, int outer, unsigned apply);
/* Traps of the apply not returned through yet. */
unsigned klp_park_pending(unsigned apply);
/* Until every trap of the apply was returned through, or `until`.  With no trap to
 * wait for (the busy threads could not be trapped) this is the backoff's sleep. */
void klp_park_wait_traps(unsigned apply, uint64_t until);
/* The apply is over: with the world stopped (`stopped`), the traps are taken back (a
 * thread already inside the trampoline keeps its trap until it reads it); with NULL
 * they stay, and a thread returning through one later passes straight through.  The
 * parked threads go. */
void klp_park_end(struct klp_slots *stopped, unsigned apply);
/* In a forked child: nothing is being applied; the traps the forking thread (`forker`,
 * its tid in the parent) inherited are its own and pass straight through. */
void klp_park_forked(pid_t forker);
/* In a forked child: no stop is in progress. */
void klp_stop_forked(void);
/* In a forked child: no callback runs, no lookup is in progress. */
void klp_state_forked(void);
/* Around a fork: the shadow table is consistent in the child. */
void klp_shadow_fork_prepare(void);
void klp_shadow_fork_done(void);

#endif /* KLPCC_INTERNAL_H */
