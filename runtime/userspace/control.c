// SPDX-License-Identifier: MIT
/*
 * control.c - the control socket.  A thread started by the constructor listens on
 * <dir>/<pid>.sock and serves one connection at a time: the client sends one line, the
 * runtime answers one line of JSON and closes.
 *
 *   apply-fd <timeout_ms> <name>   (the patch object's descriptor sent with SCM_RIGHTS)
 *   apply <timeout_ms> <absolute path>   status   disable <timeout_ms> [<patch>]
 *
 * The same thread does the runtime's own work, which threads of the program ask for and
 * wait on (klp_control_sync): after a dlopen or dlclose, the objects that came or went
 * (patch.c) and the patches installed for objects that came (store.c).  It does that
 * even when it cannot listen.
 *
 * <dir> is $KLPCC_SOCKET_DIR, else a directory nobody else can create: /run/klpcc for
 * root, $XDG_RUNTIME_DIR/klpcc or /run/user/<euid>/klpcc for others, else
 * /tmp/.klpcc-<euid> -- and when another user took that name first, a fresh
 * /tmp/.klpcc-<euid>.XXXXXX (clients find a process's socket through /proc, whatever
 * the directory).  Every directory must belong to the euid and be writable by nobody
 * else.
 *
 * Only the process's euid and root may talk to it (SO_PEERCRED, in this process's user
 * namespace), or a peer that proves it may read this process's memory (and so could
 * control it anyway): a refusal names the address of a random token, and a request
 * prefixed "proof <token in hex> " is accepted.  Root of the host reaches a process in
 * a container's user namespace that way; a container's root cannot reach the host's.
 *
 * The thread blocks every signal, the stop signal included: it is the one thread never
 * stopped.
 *
 * A forked child has no threads but the one that forked: the runtime starts again in it
 * (pthread_atfork), with a control thread and a socket of its own pid.  It keeps what it
 * inherited -- the patches loaded and installed, their states, shadow variables,
 * redirects -- which agree with each other: the records change in the same stop as the
 * code (patch.c), and a fork cannot happen while the world is stopped.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

#define MAX_REQUEST (PATH_MAX + 64)
#define MAX_TIMEOUT_MS (24ul * 3600 * 1000)

#define WHY_LEN (PATH_MAX + 128)
#define SYNC_TIMEOUT_MS 10000ul /* patching a library as it loads */
#define SYNC_WAIT_S 2 /* the longest a dlopen waits for the control thread */

static char socket_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
static char made_dir[PATH_MAX]; /* a directory of ours under /tmp, removed at exit */
static int listen_fd = -1;
static pid_t owner;
static unsigned char proof[16]; /* what a peer that can read our memory can send back */
static int proof_ready;

/* Work the program's threads ask the control thread for (klp_control_sync). */
static int event_fd = -1;
static pid_t control_tid;
static pthread_mutex_t sync_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t sync_done;
static unsigned long sync_asked, sync_served;

static pid_t forker;	/* the thread forking (its tid in the parent) */
static int serving = -1, serving_passed = -1;	/* the connection served now, its descriptor */

static void remove_socket(void)
{
	/* A forked child inherits this handler but not the socket. */
	if (getpid() == owner && socket_path[0]) {
		unlink(socket_path);
		if (made_dir[0])
			rmdir(made_dir);
	}
}

/* Is ``dir`` a directory of the euid that nobody else may write?  0, or -1 and why. */
static int safe_dir(const char *dir, char *why)
{
	struct stat st;

	if (lstat(dir, &st)) {
		snprintf(why, WHY_LEN, "cannot stat %s: %s", dir, strerror(errno));
		return -1;
	}
	if (!S_ISDIR(st.st_mode)) {
		snprintf(why, WHY_LEN, "%s is not a directory", dir);
		return -1;
	}
	if (st.st_uid != geteuid()) {
		snprintf(why, WHY_LEN, "%s belongs to uid %u, not to uid %u", dir, (unsigned)st.st_uid,
			 (unsigned)geteuid());
		return -1;
	}
	if (st.st_mode & (S_IWGRP | S_IWOTH)) {
		snprintf(why, WHY_LEN, "%s is writable by group or others (mode %03o)", dir,
			 (unsigned)(st.st_mode & 0777));
		return -1;
	}
	return 0;
}

/* ``dir`` created (0700) if missing, and safe. */
static int own_dir(const char *dir, char *why)
{
	if (mkdir(dir, 0700) && errno != EEXIST) {
		snprintf(why, WHY_LEN, "cannot create %s: %s", dir, strerror(errno));
		return -1;
	}
	return safe_dir(dir, why);
}

/* ``dir`` = ``parent``/klpcc, where ``parent`` is a safe directory of ours. */
static int under(char *dir, size_t len, const char *parent, char *why)
{
	int n = snprintf(dir, len, "%s/klpcc", parent);

	if (n < 0 || (size_t)n >= len) {
		snprintf(why, WHY_LEN, "%s is too long", parent);
		return -1;
	}
	return safe_dir(parent, why) || own_dir(dir, why);
}

static int socket_dir(char *dir, size_t len)
{
	const char *env = secure_getenv("KLPCC_SOCKET_DIR");
	char why[WHY_LEN], parent[64];
	int n;

	if (env && *env) {
		n = snprintf(dir, len, "%s", env);
		if (n < 0 || (size_t)n >= len) {
			klp_log("KLPCC_SOCKET_DIR is too long; not listening");
			return -1;
		}
		if (own_dir(dir, why)) {
			klp_log("%s; not listening", why);
			return -1;
		}
		return 0;
	}
	if (geteuid() == 0) {
		if (!under(dir, len, "/run", why))
			return 0;
	} else {
		const char *xdg = secure_getenv("XDG_RUNTIME_DIR");

		if (xdg && *xdg && !under(dir, len, xdg, why))
			return 0;
		snprintf(parent, sizeof(parent), "/run/user/%u", (unsigned)geteuid());
		if (!under(dir, len, parent, why))
			return 0;
	}
	snprintf(dir, len, "/tmp/.klpcc-%u", (unsigned)geteuid());
	if (!own_dir(dir, why))
		return 0;
	/* Another user took the name first: a fresh directory nobody else can have made. */
	snprintf(dir, len, "/tmp/.klpcc-%u.XXXXXX", (unsigned)geteuid());
	if (!mkdtemp(dir)) {
		klp_log("%s, and cannot make another: %s; not listening", why, strerror(errno));
		return -1;
	}
	klp_log("%s; listening in %s instead", why, dir);
	snprintf(made_dir, sizeof(made_dir), "%s", dir);
	return 0;
}

/* Does something listen on the socket ``path``? */
static int alive(const char *path)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), ok;

	if (fd < 0)
		return 0;
	snprintf(a.sun_path, sizeof(a.sun_path), "%s", path);
	ok = !connect(fd, (struct sockaddr *)&a, sizeof(a));
	close(fd);
	return ok;
}

static int open_socket(void)
{
	static int registered;
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
	if (alive(addr.sun_path)) {
		/* A process with our pid in another PID namespace, sharing the directory: a
		 * name of our own beside its (clients find the socket through /proc). */
		unsigned char r[4] = { 0 };

		if (getrandom(r, sizeof(r), 0) != (ssize_t)sizeof(r))
			r[0] = (unsigned char)time(NULL);
		n = snprintf(addr.sun_path, sizeof(addr.sun_path), "%s/%d.%02x%02x%02x%02x.sock", dir,
			     (int)getpid(), r[0], r[1], r[2], r[3]);
		if (n < 0 || (size_t)n >= sizeof(addr.sun_path)) {
			klp_log("socket path in %s is too long; not listening", dir);
			close(fd);
			return -1;
		}
	}
	unlink(addr.sun_path); /* a process with our pid that died without cleaning up */
	if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) || chmod(addr.sun_path, 0600) ||
	    listen(fd, 16)) {
		klp_log("cannot listen on %s: %s", addr.sun_path, strerror(errno));
		unlink(addr.sun_path);
		if (made_dir[0])
			rmdir(made_dir);
		close(fd);
		return -1;
	}
	memcpy(socket_path, addr.sun_path, sizeof(socket_path));
	owner = getpid();
	/* Once: a forked child inherits the registration (and may not call atexit, whose
	 * lock another thread of the parent may have held when it forked). */
	if (!registered++)
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
	klp_json_raw(j, "],\"pending\":[");
	klp_json_raw(j, o->pending.buf ? o->pending.buf : "");
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

static void dispatch(char *line, int passed, struct klp_json *j)
{
	struct klp_outcome out = { 0 };
	unsigned long ms;
	const char *rest;

	if (!strcmp(line, "status")) {
		klp_status(j);
		return;
	}
	if (!strncmp(line, "apply-fd ", 9)) {
		rest = parse_timeout(line + 9, &ms);
		if (!rest || *rest != ' ' || !rest[1]) {
			refuse(j, "request", "usage: apply-fd <timeout_ms> <name>, with the descriptor");
			return;
		}
		if (passed < 0) {
			refuse(j, "request", "apply-fd came without a file descriptor (SCM_RIGHTS)");
			return;
		}
		klp_apply(rest + 1, passed, ms, &out);
	} else if (!strncmp(line, "apply ", 6)) {
		rest = parse_timeout(line + 6, &ms);
		if (!rest || *rest != ' ' || rest[1] != '/') {
			refuse(j, "request", "usage: apply <timeout_ms> <absolute path>");
			return;
		}
		klp_apply(rest + 1, -1, ms, &out);
	} else if (!strncmp(line, "disable ", 8)) {
		rest = parse_timeout(line + 8, &ms);
		if (!rest || (*rest && !rest[1])) {
			refuse(j, "request", "usage: disable <timeout_ms> [<patch>]");
			return;
		}
		klp_disable(*rest ? rest + 1 : NULL, ms, &out);
	} else {
		refuse(j, "request", "unknown request (apply-fd <timeout_ms> <name> | apply <timeout_ms> "
				     "<path> | status | disable <timeout_ms> [<patch>])");
		return;
	}
	answer_outcome(j, &out);
	klp_outcome_free(&out);
}

/* Keep the first descriptor a message carries in *passed; close any other. */
static void take_fds(struct msghdr *mh, int *passed)
{
	for (struct cmsghdr *c = CMSG_FIRSTHDR(mh); c; c = CMSG_NXTHDR(mh, c)) {
		size_t n;

		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (size_t i = 0; i < n; i++) {
			int fd;

			memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
			if (*passed < 0)
				*passed = fd;
			else
				close(fd);
		}
	}
}

/* Read one line (without its end), and the descriptor sent with it (else -1); -1 if no
 * line arrived. */
static int read_line(int fd, char *buf, size_t size, int *passed)
{
	size_t len = 0;

	*passed = -1;
	while (len < size - 1) {
		union {
			char buf[CMSG_SPACE(4 * sizeof(int))];
			struct cmsghdr align;
		} ctrl;
		struct iovec iov = { buf + len, size - 1 - len };
		struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctrl.buf,
				     .msg_controllen = sizeof(ctrl.buf) };
		ssize_t n = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC);
		char *nl;

		if (n < 0 && errno == EINTR)
			continue;
		if (n >= 0)
			take_fds(&mh, passed);
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

static int hexval(char c)
{
	return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* A line "proof <32 hex digits> <request>": 1 if the token is ours, -1 if it is not (in
 * time that does not depend on where it differs), 0 for any other line; *line moves to
 * the request. */
static int proven(char **line)
{
	unsigned char diff = 0;
	char *p = *line;

	if (strncmp(p, "proof ", 6))
		return 0;
	p += 6;
	for (size_t i = 0; i < sizeof(proof); i++) {
		int hi = hexval(p[2 * i]), lo = hi < 0 ? -1 : hexval(p[2 * i + 1]);

		if (hi < 0 || lo < 0)
			return 0;
		diff |= (unsigned char)(proof[i] ^ (hi << 4 | lo));
	}
	p += 2 * sizeof(proof);
	if (*p != ' ')
		return 0;
	*line = p + 1;
	return proof_ready && !diff ? 1 : -1;
}

static void serve(int fd)
{
	static char line[MAX_REQUEST];
	struct timeval tv = { 10, 0 };
	struct ucred cred;
	socklen_t len = sizeof(cred);
	struct klp_json j = { 0 };
	char msg[160], *request = line;
	int passed, trusted;

	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	/* The line is read in every case: closing with it unread would reset the connection
	 * before the client reads the answer. */
	int got = read_line(fd, line, sizeof(line), &passed);

	serving_passed = passed;

	trusted = got ? 0 : proven(&request);
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) || len != sizeof(cred)) {
		refuse(&j, "request", "cannot read the peer's credentials");
	} else if (trusted < 0) {
		refuse(&j, "request", "the proof is not this process's token");
	} else if (cred.uid != geteuid() && cred.uid != 0 && !trusted) {
		snprintf(msg, sizeof(msg), "uid %u may not control this process (uid %u or root only, "
			 "as this process's user namespace sees them)", (unsigned)cred.uid,
			 (unsigned)geteuid());
		klp_json_raw(&j, "{\"ok\":false,\"step\":\"request\",\"error\":");
		klp_json_str(&j, msg);
		if (proof_ready)
			klp_json_fmt(&j, ",\"proof\":\"%p\"", (void *)proof);
		klp_json_raw(&j, "}");
	} else if (got) {
		refuse(&j, "request", "no request line");
	} else {
		dispatch(request, passed, &j);
	}
	serving_passed = -1;
	if (passed >= 0)
		close(passed);
	send_line(fd, &j);
	klp_json_free(&j);
}

/* What the program's threads asked for since the last time. */
static void serve_sync(void)
{
	uint64_t n;
	unsigned long asked;

	if (read(event_fd, &n, sizeof(n)) < 0 && errno != EAGAIN)
		return;
	pthread_mutex_lock(&sync_lock);
	asked = sync_asked;
	pthread_mutex_unlock(&sync_lock);
	klp_objects_sync(SYNC_TIMEOUT_MS);
	klp_store_apply(SYNC_TIMEOUT_MS);
	pthread_mutex_lock(&sync_lock);
	sync_served = asked;
	pthread_cond_broadcast(&sync_done);
	pthread_mutex_unlock(&sync_lock);
}

static void *control_main(void *arg)
{
	(void)arg;
	control_tid = klp_gettid();
	for (;;) {
		struct pollfd pf[2] = { { event_fd, POLLIN, 0 }, { listen_fd, POLLIN, 0 } };
		int fd;

		if (poll(pf, listen_fd >= 0 ? 2 : 1, -1) < 0)
			continue;
		if (pf[0].revents)
			serve_sync();
		if (listen_fd < 0 || !(pf[1].revents & POLLIN))
			continue;
		fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno != EINTR && errno != ECONNABORTED && errno != EAGAIN) {
				struct timespec ts = { 0, 100 * 1000 * 1000 };

				nanosleep(&ts, NULL); /* EMFILE and the like: try later */
			}
			continue;
		}
		serving = fd;
		serve(fd);
		serving = -1;
		/* shut down, not only closed: a child forked meanwhile may hold a copy */
		shutdown(fd, SHUT_RDWR);
		close(fd);
	}
	return NULL;
}

void klp_control_sync(void)
{
	static const uint64_t one = 1;
	unsigned long mine;
	struct timespec until;
	int late = 0;

	/* Not before the thread runs, not in a forked child (it has no control thread),
	 * not from the control thread itself (a callback that loads a library). */
	if (event_fd < 0 || getpid() != klp_prog.pid || klp_gettid() == control_tid)
		return;
	clock_gettime(CLOCK_MONOTONIC, &until);
	until.tv_sec += SYNC_WAIT_S;
	pthread_mutex_lock(&sync_lock);
	mine = ++sync_asked;
	if (write(event_fd, &one, sizeof(one)) == (ssize_t)sizeof(one))
		while (sync_served < mine && !late)
			late = pthread_cond_timedwait(&sync_done, &sync_lock, &until) == ETIMEDOUT;
	pthread_mutex_unlock(&sync_lock);
	if (late)
		klp_log("the runtime is busy (a request): what the last dlopen or dlclose changed is "
			"patched once it is done");
}

static void before_fork(void)
{
	forker = klp_gettid();
	klp_shadow_fork_prepare();
}

static void after_fork_parent(void)
{
	klp_shadow_fork_done();
}

/* In a forked child: the parent's socket, descriptors and thread are not ours. */
static void restart_in_child(void)
{
	klp_shadow_fork_done();
	klp_prog.pid = getpid();
	if (serving >= 0) /* a client waits for the parent's answer: not for us to hold */
		close(serving);
	if (serving_passed >= 0)
		close(serving_passed);
	serving = serving_passed = -1;
	control_tid = 0;
	if (listen_fd >= 0)
		close(listen_fd);
	listen_fd = -1;
	if (event_fd >= 0)
		close(event_fd);
	event_fd = -1;
	socket_path[0] = 0; /* the parent's: not ours to remove */
	made_dir[0] = 0;
	pthread_mutex_init(&sync_lock, NULL);
	sync_asked = sync_served = 0;
	klp_park_forked(forker);
	klp_stop_forked();
	klp_state_forked();
	klp_control_start();
}

void klp_control_start(void)
{
	static int atfork;

	pthread_attr_t attr;
	pthread_condattr_t ca;
	pthread_t thread;
	sigset_t all, old;
	int rc;

	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&sync_done, &ca);
	pthread_condattr_destroy(&ca);
	event_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (event_fd < 0) {
		klp_log("eventfd: %s; the runtime does not start", strerror(errno));
		return;
	}
	listen_fd = open_socket();
	proof_ready = getrandom(proof, sizeof(proof), 0) == (ssize_t)sizeof(proof);
	sigfillset(&all);
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	rc = pthread_create(&thread, &attr, control_main, NULL);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	pthread_attr_destroy(&attr);
	if (rc) {
		klp_log("cannot start the control thread: %s", strerror(rc));
		if (listen_fd >= 0) {
			remove_socket();
			socket_path[0] = 0;
			close(listen_fd);
			listen_fd = -1;
		}
		close(event_fd);
		event_fd = -1;
		return;
	}
	pthread_setname_np(thread, "klpcc-control");
	if (!atfork++)
		pthread_atfork(before_fork, after_fork_parent, restart_in_child);
}
