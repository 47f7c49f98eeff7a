// SPDX-License-Identifier: MIT
/*
 * program.c - the objects the process has loaded, as the dynamic linker lists them
 * (dl_iterate_phdr; the first entry is the main program): where each is loaded, its
 * segments and its GNU build-id read from its PT_NOTE segments; the program's is kept
 * from the start; and the segments of a patch object.
 */
#define _GNU_SOURCE
#include <elf.h>
#include <link.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <unistd.h>

#include "internal.h"

struct klp_program klp_prog;

static int prot_of(Elf64_Word flags)
{
	return (flags & PF_R ? PROT_READ : 0) | (flags & PF_W ? PROT_WRITE : 0) |
	       (flags & PF_X ? PROT_EXEC : 0);
}

static void read_build_id(const unsigned char *p, const unsigned char *end, size_t align,
			  char *out, size_t outlen)
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
		    n->n_descsz > 0 && n->n_descsz * 2 < outlen) {
			for (Elf64_Word i = 0; i < n->n_descsz; i++) {
				out[2 * i] = hex[desc[i] >> 4];
				out[2 * i + 1] = hex[desc[i] & 15];
			}
			out[2 * n->n_descsz] = 0;
			return;
		}
		p = next;
	}
}

/* The module of one dl_iterate_phdr entry. */
static void describe(const struct dl_phdr_info *info, struct klp_module *m)
{
	memset(m, 0, sizeof(*m));
	m->bias = info->dlpi_addr;
	snprintf(m->path, sizeof(m->path), "%s", info->dlpi_name ? info->dlpi_name : "");
	for (int i = 0; i < info->dlpi_phnum; i++) {
		const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
		uintptr_t lo = info->dlpi_addr + ph->p_vaddr;

		if (ph->p_type == PT_LOAD && m->nload < KLP_MAX_SEGS) {
			m->load[m->nload++] = (struct klp_range){ lo, lo + ph->p_memsz };
			if ((ph->p_flags & PF_X) && m->ntext < KLP_MAX_SEGS) {
				m->text_prot[m->ntext] = prot_of(ph->p_flags);
				m->text[m->ntext++] = (struct klp_range){ lo, lo + ph->p_memsz };
			}
		} else if (ph->p_type == PT_NOTE && !m->build_id[0]) {
			read_build_id((const unsigned char *)lo, (const unsigned char *)lo + ph->p_memsz,
				      ph->p_align == 8 ? 8 : 4, m->build_id, sizeof(m->build_id));
		}
	}
}

static int identify_program(struct dl_phdr_info *info, size_t size, void *data)
{
	(void)size;
	(void)data;
	describe(info, &klp_prog.main);
	return 1; /* the first entry is the main program: stop there */
}

void klp_program_identify(void)
{
	klp_prog.pid = getpid();
	dl_iterate_phdr(identify_program, NULL);
}

struct module_query {
	int (*fn)(const struct klp_module *, void *);
	void *arg;
	int index;
	int rc;
};

static int each_module(struct dl_phdr_info *info, size_t size, void *data)
{
	struct module_query *q = data;
	struct klp_module m;

	(void)size;
	if (q->index++ == 0) {
		q->rc = q->fn(&klp_prog.main, q->arg); /* the program, as identified at start */
		return q->rc;
	}
	describe(info, &m);
	q->rc = q->fn(&m, q->arg);
	return q->rc;
}

int klp_modules_each(int (*fn)(const struct klp_module *, void *), void *arg)
{
	struct module_query q = { fn, arg, 0, 0 };

	dl_iterate_phdr(each_module, &q);
	return q.rc;
}

struct find_query {
	const char *build_id;
	struct klp_module *out;
};

static int match(const struct klp_module *m, void *arg)
{
	struct find_query *q = arg;

	if (!m->build_id[0] || strcasecmp(m->build_id, q->build_id))
		return 0;
	*q->out = *m;
	return 1;
}

int klp_module_find(const char *build_id, struct klp_module *m)
{
	struct find_query q = { build_id, m };

	return klp_modules_each(match, &q) ? 0 : -1;
}

int klp_module_text(const struct klp_module *m, uintptr_t lo, uintptr_t hi)
{
	for (int i = 0; i < m->ntext; i++)
		if (lo >= m->text[i].lo && hi <= m->text[i].hi && lo < hi)
			return i;
	return -1;
}

int klp_module_holds(const struct klp_module *m, uintptr_t lo, uintptr_t hi)
{
	for (int i = 0; i < m->nload; i++)
		if (lo >= m->load[i].lo && hi <= m->load[i].hi && lo < hi)
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
