// SPDX-License-Identifier: MIT
/*
 * control.c - the control socket.  A thread started by the constructor listens on
 * $KLPCC_SOCKET_DIR/<pid>.sock (default /tmp/.klpcc-<euid>, a directory of the euid that
 * nobody else may write) and serves one connection at a time: the client sends one
 * line, the runtime answers one line of JSON and closes.
 *
 *   apply <timeout_ms> <absolute path>   status   disable <timeout_ms>
 *
 * Only the process's euid and root may talk to it (SO_PEERCRED).  The thread blocks
 * every signal, the stop signal included: it is the one thread never stopped.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

#define MAX_REQUEST (PATH_MAX + 64)
#define MAX_TIMEOUT_MS (24ul * 3600 * 1000)

static char socket_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
static int listen_fd = -1;
static pid_t owner;

static void remove_socket(void)
{
	/* A forked child inherits this handler but not the socket. */
	if (getpid() == owner && socket_path[0])
		unlink(socket_path);
}

static int socket_dir(char *dir, size_t len)
{
	const char *env = getenv("KLPCC_SOCKET_DIR");
	struct stat st;

	int n;

	if (env && *env)
		n = snprintf(dir, len, "%s", env);
	else
		n = snprintf(dir, len, "/tmp/.klpcc-%u", (unsigned)geteuid());
	if (n < 0 || (size_t)n >= len) {
		klp_log("KLPCC_SOCKET_DIR is too long; not listening");
		return -1;
	}
	if (mkdir(dir, 0700) && errno != EEXIST) {
		klp_log("cannot create %s: %s; not listening", dir, strerror(errno));
		return -1;
	}
	if (lstat(dir, &st)) {
		klp_log("cannot stat %s: %s; not listening", dir, strerror(errno));
		return -1;
	}
	if (!S_ISDIR(st.st_mode)) {
		klp_log("%s is not a directory; not listening", dir);
		return -1;
	}
	if (st.st_uid != geteuid()) {
		klp_log("%s belongs to uid %u, not to uid %u; not listening", dir,
			(unsigned)st.st_uid, (unsigned)geteuid());
		return -1;
	}
	if (st.st_mode & (S_IWGRP | S_IWOTH)) {
		klp_log("%s is writable by group or others (mode %03o); not listening", dir,
			(unsigned)(st.st_mode & 0777));
		return -1;
	}
	return 0;
}

static int open_socket(void)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	char dir[PATH_MAX];
	int fd, n;

	if (socket_dir(dir, sizeof(dir)))
		return -1;
	n = snprintf(addr.sun_path, sizeof(addr.sun_path), "%s/%d.sock", dir, (int)getpid());
	if (n < 0 || (size_t)n >= sizeof(addr.sun_path)) {
		klp_log("socket path %s/%d.sock is too long; not listening", dir, (int)getpid());
		return -1;
	}
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		klp_log("socket: %s; not listening", strerror(errno));
		return -1;
	}
	unlink(addr.sun_path); /* a process with our pid that died without cleaning up */
	if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) || chmod(addr.sun_path, 0600) ||
	    listen(fd, 16)) {
		klp_log("cannot listen on %s: %s", addr.sun_path, strerror(errno));
		unlink(addr.sun_path);
		close(fd);
		return -1;
	}
	memcpy(socket_path, addr.sun_path, sizeof(socket_path));
	owner = getpid();
	atexit(remove_socket);
	return fd;
}

/* ---- one connection -------------------------------------------------------------------- */

static void send_line(int fd, struct klp_json *j)
{
	static const char oom[] = "{\"ok\":false,\"step\":\"internal\",\"error\":\"out of memory\"}\n";
	const char *p;
	size_t left;

	klp_json_raw(j, "\n");
	p = j->failed ? oom : j->buf;
	left = j->failed ? sizeof(oom) - 1 : j->len;
	while (left) {
		ssize_t n = send(fd, p, left, MSG_NOSIGNAL);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return;
		p += n;
		left -= (size_t)n;
	}
}

static void refuse(struct klp_json *j, const char *step, const char *error)
{
	klp_json_fmt(j, "{\"ok\":false,\"step\":\"%s\",\"error\":", step);
	klp_json_str(j, error);
	klp_json_raw(j, "}");
}

static void answer_outcome(struct klp_json *j, const struct klp_outcome *o)
{
	if (o->step) {
		refuse(j, o->step, o->error);
		return;
	}
	klp_json_raw(j, "{\"ok\":true,\"patch\":");
	klp_json_str(j, o->patch);
	klp_json_raw(j, ",\"replaced\":[");
	klp_json_raw(j, o->replaced.buf ? o->replaced.buf : "");
	klp_json_raw(j, "],\"unloaded\":[");
	klp_json_raw(j, o->unloaded.buf ? o->unloaded.buf : "");
	klp_json_raw(j, "],\"nops\":[");
	klp_json_raw(j, o->nops.buf ? o->nops.buf : "");
	klp_json_fmt(j, "],\"tries\":%u,\"parked\":%u,\"stopped_us\":%llu,\"total_us\":%llu}",
		     o->tries, o->parked, (unsigned long long)o->stopped_us,
		     (unsigned long long)o->total_us);
}

/* "<digits>" then a space or the end; returns the rest or NULL. */
static const char *parse_timeout(const char *s, unsigned long *ms)
{
	unsigned long v = 0;
	const char *p = s;

	if (*p < '0' || *p > '9')
		return NULL;
	for (; *p >= '0' && *p <= '9'; p++) {
		if (v > MAX_TIMEOUT_MS)
			return NULL;
		v = v * 10 + (unsigned long)(*p - '0');
	}
	if (v > MAX_TIMEOUT_MS || (*p && *p != ' '))
		return NULL;
	*ms = v;
	return p;
}

static void dispatch(char *line, struct klp_json *j)
{
	struct klp_outcome out = { 0 };
	unsigned long ms;
	const char *rest;

	if (!strcmp(line, "status")) {
		klp_status(j);
		return;
	}
	if (!strncmp(line, "apply ", 6)) {
		rest = parse_timeout(line + 6, &ms);
		if (!rest || *rest != ' ' || rest[1] != '/') {
			refuse(j, "request", "usage: apply <timeout_ms> <absolute path>");
			return;
		}
		klp_apply(rest + 1, ms, &out);
	} else if (!strncmp(line, "disable ", 8)) {
		rest = parse_timeout(line + 8, &ms);
		if (!rest || *rest) {
			refuse(j, "request", "usage: disable <timeout_ms>");
			return;
		}
		klp_disable(ms, &out);
	} else {
		refuse(j, "request", "unknown request (apply <timeout_ms> <path> | status | "
				     "disable <timeout_ms>)");
		return;
	}
	answer_outcome(j, &out);
	klp_outcome_free(&out);
}

/* Read one line (without its end); -1 if none arrived. */
static int read_line(int fd, char *buf, size_t size)
{
	size_t len = 0;

	while (len < size - 1) {
		ssize_t n = recv(fd, buf + len, size - 1 - len, 0);
		char *nl;

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		buf[len + (size_t)n] = 0;
		nl = memchr(buf + len, '\n', (size_t)n);
		len += (size_t)n;
		if (nl) {
			*nl = 0;
			len = (size_t)(nl - buf);
			break;
		}
	}
	if (!len)
		return -1;
	buf[len] = 0;
	if (buf[len - 1] == '\r')
		buf[len - 1] = 0;
	return 0;
}

static void serve(int fd)
{
	static char line[MAX_REQUEST];
	struct timeval tv = { 10, 0 };
	struct ucred cred;
	socklen_t len = sizeof(cred);
	struct klp_json j = { 0 };
	char msg[128];

	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	/* The line is read in every case: closing with it unread would reset the connection
	 * before the client reads the answer. */
	int got = read_line(fd, line, sizeof(line));

	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) || len != sizeof(cred)) {
		refuse(&j, "request", "cannot read the peer's credentials");
	} else if (cred.uid != geteuid() && cred.uid != 0) {
		snprintf(msg, sizeof(msg), "uid %u may not control this process (uid %u or root only)",
			 (unsigned)cred.uid, (unsigned)geteuid());
		refuse(&j, "request", msg);
	} else if (got) {
		refuse(&j, "request", "no request line");
	} else {
		dispatch(line, &j);
	}
	send_line(fd, &j);
	klp_json_free(&j);
}

static void *control_main(void *arg)
{
	(void)arg;
	for (;;) {
		int fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);

		if (fd < 0) {
			if (errno != EINTR && errno != ECONNABORTED) {
				struct timespec ts = { 0, 100 * 1000 * 1000 };

				nanosleep(&ts, NULL); /* EMFILE and the like: try later */
			}
			continue;
		}
		serve(fd);
		close(fd);
	}
	return NULL;
}

void klp_control_start(void)
{
	pthread_attr_t attr;
	pthread_t thread;
	sigset_t all, old;
	int rc;

	listen_fd = open_socket();
	if (listen_fd < 0)
		return;
	sigfillset(&all);
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	rc = pthread_create(&thread, &attr, control_main, NULL);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	pthread_attr_destroy(&attr);
	if (rc) {
		klp_log("cannot start the control thread: %s", strerror(rc));
		remove_socket();
		socket_path[0] = 0;
		close(listen_fd);
		listen_fd = -1;
		return;
	}
	pthread_setname_np(thread, "klpcc-control");
}
