// SPDX-License-Identifier: MIT
/*
 * store.c - the patches installed for the program and its libraries (`klpcc install`),
 * applied when the process starts, before main (by the constructor's thread), and when
 * a library is loaded later (by the control thread).
 *
 * A store is a directory; the patch installed for the object with build-id B is
 * <store>/userspace/B.so (a patch object, or a link to one).  The stores are
 * $KLPCC_STATE_DIR alone when it is set (set and empty, or not an absolute path: none);
 * otherwise, for a user
 * other than root, $XDG_STATE_HOME/klpcc (else ~/.local/state/klpcc) and then
 * /var/lib/klpcc; for root, /var/lib/klpcc.  The first store with a record for an
 * object wins.  A store is trusted only when <store>/userspace is a directory of the
 * euid or root that nobody else may write, and a patch object only when it is a
 * regular file of the euid or root that nobody else may write; anything else is
 * skipped with a line on stderr.  Each object is looked up once per process.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

#define MAX_STORES 2

struct ids {
	char (*v)[129];
	size_t n, cap;
};

static struct ids checked; /* objects looked up already */

static int ids_add(struct ids *s, const char *id)
{
	if (s->n == s->cap) {
		size_t cap = s->cap ? 2 * s->cap : 32;
		char (*v)[129] = realloc(s->v, cap * sizeof(*v));

		if (!v)
			return -1;
		s->v = v;
		s->cap = cap;
	}
	snprintf(s->v[s->n++], sizeof(s->v[0]), "%s", id);
	return 0;
}

static int ids_has(const struct ids *s, const char *id)
{
	for (size_t i = 0; i < s->n; i++)
		if (!strcmp(s->v[i], id))
			return 1;
	return 0;
}

static int trusted(const struct stat *st)
{
	return (st->st_uid == geteuid() || st->st_uid == 0) && !(st->st_mode & (S_IWGRP | S_IWOTH));
}

/* The stores, most specific first; returns how many. */
static int stores(char dirs[MAX_STORES][PATH_MAX])
{
	const char *env = secure_getenv("KLPCC_STATE_DIR"), *xdg, *home;
	int n = 0;

	if (env) {
		if (*env && *env != '/') {
			static int said;

			if (!said++)
				klp_log("KLPCC_STATE_DIR=%s is not an absolute path: no patch installed is "
					"applied", env);
			return 0;
		}
		return *env && snprintf(dirs[0], PATH_MAX, "%s", env) < PATH_MAX ? 1 : 0;
	}
	if (geteuid() != 0) {
		xdg = secure_getenv("XDG_STATE_HOME");
		home = secure_getenv("HOME");
		if (xdg && *xdg == '/' && snprintf(dirs[n], PATH_MAX, "%s/klpcc", xdg) < PATH_MAX)
			n++;
		else if (home && *home == '/' &&
			 snprintf(dirs[n], PATH_MAX, "%s/.local/state/klpcc", home) < PATH_MAX)
			n++;
	}
	snprintf(dirs[n++], PATH_MAX, "/var/lib/klpcc");
	return n;
}

/* The installed patch object for `build_id`, opened; -1 if there is none to trust. */
static int open_record(const char *build_id, char *path, size_t len)
{
	static int untrusted_said[MAX_STORES];
	char dirs[MAX_STORES][PATH_MAX], dir[PATH_MAX];
	int n = stores(dirs);

	for (int i = 0; i < n; i++) {
		struct stat st;
		int fd;

		if (snprintf(dir, sizeof(dir), "%s/userspace", dirs[i]) >= (int)sizeof(dir) ||
		    snprintf(path, len, "%s/%s.so", dir, build_id) >= (int)len)
			continue;
		if (lstat(dir, &st))
			continue;
		if (!S_ISDIR(st.st_mode) || !trusted(&st)) {
			if (!untrusted_said[i]++)
				klp_log("%s is not a directory of uid %u or root that only its owner may "
					"write; its patches are not applied", dir, (unsigned)geteuid());
			continue;
		}
		fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0) {
			if (errno != ENOENT)
				klp_log("%s: %s", path, strerror(errno));
			continue;
		}
		if (fstat(fd, &st) || !S_ISREG(st.st_mode) || !trusted(&st)) {
			klp_log("%s is not a regular file of uid %u or root that only its owner may "
				"write; not applied", path, (unsigned)geteuid());
			close(fd);
			continue;
		}
		return fd;
	}
	return -1;
}

struct loaded_ids {
	struct ids ids;
	struct ids names;
	int failed;
};

static int collect(const struct klp_module *m, void *arg)
{
	struct loaded_ids *l = arg;

	if (m->build_id[0] && (ids_add(&l->ids, m->build_id) ||
			       ids_add(&l->names, m->path[0] ? m->path : "the program")))
		l->failed = 1;
	return 0;
}

void klp_store_apply(unsigned long timeout_ms)
{
	struct loaded_ids l = { 0 };
	char path[PATH_MAX];

	/* The loader's list is read first: an apply loads an object itself. */
	klp_modules_each(collect, &l);
	for (size_t i = 0; i < l.ids.n && !l.failed; i++) {
		const char *id = l.ids.v[i];
		struct klp_outcome out = { 0 };
		int fd;

		if (ids_has(&checked, id) || klp_covered(id))
			continue;
		if (ids_add(&checked, id))
			break;
		fd = open_record(id, path, sizeof(path));
		if (fd < 0)
			continue;
		klp_apply(path, fd, timeout_ms, &out);
		close(fd);
		if (out.step)
			klp_log("the patch installed for %s (%s) was not applied (%s): %s",
				l.names.v[i], path, out.step, out.error);
		else
			klp_log("applied %s, installed for %s", out.patch, l.names.v[i]);
		klp_outcome_free(&out);
	}
	free(l.ids.v);
	free(l.names.v);
}
