// SPDX-License-Identifier: MIT
/*
 * program.c - the program's identity: where it is loaded (the first entry of
 * dl_iterate_phdr, the main program), its segments, and its GNU build-id read from its
 * PT_NOTE segments; and the segments of any other loaded object (the patch objects).
 */
#define _GNU_SOURCE
#include <elf.h>
#include <link.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "internal.h"

struct klp_program klp_prog;

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

void klp_program_identify(void)
{
	klp_prog.pid = getpid();
	dl_iterate_phdr(identify_program, NULL);
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
