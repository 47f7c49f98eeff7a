/* SPDX-License-Identifier: MIT */
/*
 * park.S - where a busy thread parks.  When the stack check finds a thread inside a
 * function being switched, the runtime replaces the return address of the outermost
 * such frame (at its CFA - 8) with klpcc_park_trampoline.  The frame returns here with
 * its result in rax/rdx/xmm0/xmm1; we keep them, ask klpcc_park_enter for the real
 * return address (found by the address it was taken from, CFA - 8), store it where a
 * return address belongs, block in klpcc_park_wait until the switch is over, and
 * return to the caller with the registers as the function left them.
 *
 * Frame, with C the stack pointer on arrival (the caller's, 16-byte aligned):
 *   C-8 return address (stored once known)   C-16 rax   C-24 rdx
 *   C-32 the apply the trap belongs to       C-48 xmm1  C-64 xmm0
 *
 * Unwind info: until the return address is stored, the frame says "no caller"
 * (undefined rip), so a thread stopped here shows a stack ending in the trampoline;
 * afterwards (klpcc_park_stored onwards) its callers unwind normally.  The nop before
 * the entry keeps a return address equal to klpcc_park_trampoline inside this FDE.
 */
	.text
	.p2align 4
	.globl	klpcc_park_begin
	.hidden	klpcc_park_begin
	.globl	klpcc_park_trampoline
	.hidden	klpcc_park_trampoline
	.type	klpcc_park_trampoline, @function
	.globl	klpcc_park_stored
	.hidden	klpcc_park_stored
	.globl	klpcc_park_end
	.hidden	klpcc_park_end
klpcc_park_begin:
	.cfi_startproc
	.cfi_def_cfa %rsp, 0
	.cfi_undefined %rip
	nop
klpcc_park_trampoline:
	subq	$8, %rsp
	.cfi_adjust_cfa_offset 8
	pushq	%rax
	.cfi_adjust_cfa_offset 8
	pushq	%rdx
	.cfi_adjust_cfa_offset 8
	subq	$40, %rsp
	.cfi_adjust_cfa_offset 40
	movdqu	%xmm0, 0(%rsp)
	movdqu	%xmm1, 16(%rsp)
	leaq	64(%rsp), %rdi
	leaq	32(%rsp), %rsi
	call	klpcc_park_enter
	movq	%rax, 56(%rsp)
	.cfi_offset %rip, -8
klpcc_park_stored:
	movq	32(%rsp), %rdi
	call	klpcc_park_wait
	movdqu	0(%rsp), %xmm0
	movdqu	16(%rsp), %xmm1
	addq	$40, %rsp
	.cfi_adjust_cfa_offset -40
	popq	%rdx
	.cfi_adjust_cfa_offset -8
	popq	%rax
	.cfi_adjust_cfa_offset -8
	ret
	.cfi_endproc
klpcc_park_end:
	.size	klpcc_park_trampoline, klpcc_park_end - klpcc_park_trampoline

	.section .note.GNU-stack, "", @progbits
