// SPDX-License-Identifier: MIT
/*
 * runtime.c - the runtime's start and the program's identity: where it is loaded (the
 * first entry of dl_iterate_phdr, the main program), its executable segments, and its
 * GNU build-id read from its PT_NOTE segments.
 */
#define _GNU_SOURCE
#include <elf.h>
#include <errno.h>
#include <link.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

struct klp_program klp_prog;

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
	if (n > (int)sizeof(buf) - 1)
		n = sizeof(buf) - 1;
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

static int prot_of(Elf64_Word flags)
{
	return (flags & PF_R ? PROT_READ : 0) | (flags & PF_W ? PROT_WRITE : 0) |
	       (flags & PF_X ? PROT_EXEC : 0);
}

static void read_build_id(const unsigned char *p, const unsigned char *end, size_t align)
{
	static const char hex[] = "0123456789abcdef";

	while ((size_t)(end - p) >= sizeof(Elf64_Nhdr)) {
		const Elf64_Nhdr *n = (const Elf64_Nhdr *)p;
		const unsigned char *name = p + sizeof(*n);
		const unsigned char *desc = name + ((n->n_namesz + align - 1) & ~(align - 1));
		const unsigned char *next = desc + ((n->n_descsz + align - 1) & ~(align - 1));

		if (next > end || next <= p)
			return;
		if (n->n_type == NT_GNU_BUILD_ID && n->n_namesz == 4 && !memcmp(name, "GNU", 4) &&
		    n->n_descsz > 0 && n->n_descsz * 2 < sizeof(klp_prog.build_id)) {
			for (Elf64_Word i = 0; i < n->n_descsz; i++) {
				klp_prog.build_id[2 * i] = hex[desc[i] >> 4];
				klp_prog.build_id[2 * i + 1] = hex[desc[i] & 15];
			}
			klp_prog.build_id[2 * n->n_descsz] = 0;
			return;
		}
		p = next;
	}
}

static int identify_program(struct dl_phdr_info *info, size_t size, void *data)
{
	(void)size;
	(void)data;
	klp_prog.bias = info->dlpi_addr;
	for (int i = 0; i < info->dlpi_phnum; i++) {
		const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
		uintptr_t lo = info->dlpi_addr + ph->p_vaddr;

		if (ph->p_type == PT_LOAD && klp_prog.nload < KLP_MAX_SEGS) {
			klp_prog.load[klp_prog.nload++] = (struct klp_range){ lo, lo + ph->p_memsz };
			if ((ph->p_flags & PF_X) && klp_prog.ntext < KLP_MAX_SEGS) {
				klp_prog.text_prot[klp_prog.ntext] = prot_of(ph->p_flags);
				klp_prog.text[klp_prog.ntext++] =
					(struct klp_range){ lo, lo + ph->p_memsz };
			}
		} else if (ph->p_type == PT_NOTE && !klp_prog.build_id[0]) {
			read_build_id((const unsigned char *)lo,
				      (const unsigned char *)lo + ph->p_memsz,
				      ph->p_align == 8 ? 8 : 4);
		}
	}
	return 1; /* the first entry is the main program: stop there */
}

int klp_text_segment(uintptr_t lo, uintptr_t hi)
{
	for (int i = 0; i < klp_prog.ntext; i++)
		if (lo >= klp_prog.text[i].lo && hi <= klp_prog.text[i].hi && lo < hi)
			return i;
	return -1;
}

int klp_in_program(uintptr_t lo, uintptr_t hi)
{
	for (int i = 0; i < klp_prog.nload; i++)
		if (lo >= klp_prog.load[i].lo && hi <= klp_prog.load[i].hi && lo < hi)
			return 1;
	return 0;
}

struct map_query {
	uintptr_t base;
	const char *name;
	struct klp_object_map *map;
	int found;
};

static int find_object(struct dl_phdr_info *info, size_t size, void *data)
{
	struct map_query *q = data;
	struct klp_object_map *m = q->map;

	(void)size;
	if (info->dlpi_addr != q->base || strcmp(info->dlpi_name ? info->dlpi_name : "", q->name))
		return 0;
	for (int i = 0; i < info->dlpi_phnum; i++) {
		const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
		uintptr_t lo = info->dlpi_addr + ph->p_vaddr;

		if (ph->p_type == PT_LOAD && m->nseg < KLP_MAX_SEGS) {
			m->prot[m->nseg] = prot_of(ph->p_flags);
			m->seg[m->nseg++] = (struct klp_range){ lo, lo + ph->p_memsz };
		} else if (ph->p_type == PT_GNU_RELRO) {
			m->relro = (struct klp_range){ lo, lo + ph->p_memsz };
		}
	}
	q->found = 1;
	return 1;
}

int klp_object_map(uintptr_t base, const char *name, struct klp_object_map *map)
{
	struct map_query q = { base, name, map, 0 };

	memset(map, 0, sizeof(*map));
	dl_iterate_phdr(find_object, &q);
	return q.found ? 0 : -1;
}

int klp_object_holds(const struct klp_object_map *m, uintptr_t lo, uintptr_t hi, int prot)
{
	for (int i = 0; i < m->nseg; i++)
		if (lo >= m->seg[i].lo && hi <= m->seg[i].hi && lo < hi &&
		    (m->prot[i] & prot) == prot)
			return !(prot & PROT_WRITE) || hi <= m->relro.lo || lo >= m->relro.hi;
	return 0;
}

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
	klp_prog.pid = getpid();
	dl_iterate_phdr(identify_program, NULL);
	klp_prog.stop_signal = stop_signal();
	if (klp_prog.stop_signal < 0) {
		klp_log("KLPCC_SIGNAL=%s is not a usable signal; not listening",
			getenv("KLPCC_SIGNAL"));
		return;
	}
	if (klp_transition_init(klp_prog.stop_signal))
		return;
	klp_control_start();
}
