/* SPDX-License-Identifier: MIT */
/*
 * internal.h - what the parts of libklpcc.so share.  Nothing here is part of the ABI;
 * the ABI is klpcc.h.
 *
 *   runtime.c     the constructor, the program's identity (load bias, build-id, text)
 *   control.c     the control socket and its one-line protocol
 *   json.c        a small JSON writer for the answers
 *   patch.c       the apply/disable transaction, the patches loaded
 *   transition.c  stopping the world, the stack check, parking, retries
 *   park.S        the park trampoline a busy thread returns into
 *   redirect.c    entry sites, the five bytes written, far-jump trampolines
 *   state.c       klpcc_get_state / klpcc_get_prev_state
 *   shadow.c      shadow variables
 */
#ifndef KLPCC_INTERNAL_H
#define KLPCC_INTERNAL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "klpcc.h"

#define KLP_API __attribute__((visibility("default")))
#define KLP_PRINTF(a, b) __attribute__((format(printf, a, b)))

#define KLP_MAX_FRAMES 256	/* frames recorded per thread while stopped */
#define KLP_MAX_THREADS 2048	/* threads a stop can hold */
#define KLP_MAX_SEGS 16		/* PT_LOAD segments kept per object */

struct klp_range {
	uintptr_t lo, hi;	/* [lo, hi) */
};

/* ---- runtime.c --------------------------------------------------------------- */

struct klp_program {
	pid_t pid;
	uintptr_t bias;			/* dlpi_addr of the main program */
	char build_id[129];		/* lowercase hex, "" if none */
	struct klp_range text[KLP_MAX_SEGS];	/* executable PT_LOADs */
	int text_prot[KLP_MAX_SEGS];	/* their PROT_* */
	int ntext;
	struct klp_range load[KLP_MAX_SEGS];	/* every PT_LOAD */
	int nload;
	int stop_signal;
};

extern struct klp_program klp_prog;

void klp_log(const char *fmt, ...) KLP_PRINTF(1, 2);
uint64_t klp_now_us(void);
pid_t klp_gettid(void);
/* The index of the program's executable segment holding [lo, hi), or -1. */
int klp_text_segment(uintptr_t lo, uintptr_t hi);
/* Whether [lo, hi) lies inside one PT_LOAD of the program. */
int klp_in_program(uintptr_t lo, uintptr_t hi);
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

/* ---- patch.c ---------------------------------------------------------------------- */

/* What an apply or a disable answers. */
struct klp_outcome {
	const char *step;	/* NULL on success */
	char error[512];
	char *patch;
	struct klp_json replaced, unloaded, nops;	/* comma-separated JSON strings */
	unsigned tries, parked;
	uint64_t stopped_us, total_us;
};

void klp_apply(const char *path, unsigned long timeout_ms, struct klp_outcome *out);
void klp_disable(unsigned long timeout_ms, struct klp_outcome *out);
void klp_status(struct klp_json *j);
void klp_outcome_free(struct klp_outcome *out);

/* ---- state.c ------------------------------------------------------------------------ */

/* The states a patch carries (one array per loaded patch, owned by patch.c). */
struct klp_states {
	struct klpcc_state *v;
	unsigned n;
};

struct klpcc_state *klp_states_find(const struct klp_states *s, unsigned long id);
/* A patch's states once it is unloaded: freed when no klpcc_get_state may still read them. */
void klp_states_retire(struct klp_states *s);
/* Whose states klpcc_get_state / klpcc_get_prev_state answer from. */
void klp_state_set_installed(const struct klp_states *s);
void klp_state_set_context(const struct klp_states *cur, const struct klp_states *prev);

/* ---- redirect.c ---------------------------------------------------------------------- */

/* One function of the program that the runtime has redirected at some point. */
struct klp_site {
	uintptr_t entry;
	unsigned long size;
	char *name;
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
struct klp_site *klp_site_lookup(uintptr_t entry, unsigned long size, const char *name,
				 char *err, size_t errlen);
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

/* park.S */
extern const char klpcc_park_begin[], klpcc_park_trampoline[], klpcc_park_stored[],
	klpcc_park_end[];

#endif /* KLPCC_INTERNAL_H */
