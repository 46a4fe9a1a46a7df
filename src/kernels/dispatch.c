/*
 * dispatch.c - picks each kernel's instruction set once at start-up.
 */
#include <cpuid.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "quant.h"
#include "attention.h"

kernel_table kern = {ISA_REF, dot_f32_ref, bf16_to_f32_ref, f16_to_f32_ref, dot_wt_ref,
                     matmul_block_ref};

/* clang 14's __builtin_cpu_supports does not know "f16c": ask CPUID leaf 1 (ECX bit 29). */
static int cpu_has_f16c(void) {
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
}

cpu_isa cpu_best_isa(void) {
    __builtin_cpu_init();
    /* libgcc's detection also checks XCR0, i.e. that the OS saves the wide registers. */
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl"))
        return ISA_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
        cpu_has_f16c())
        return ISA_AVX2;
    return ISA_REF;
}

const char *cpu_isa_name(cpu_isa isa) {
    switch (isa) {
    case ISA_REF: return "ref";
    case ISA_AVX2: return "avx2";
    case ISA_AVX512: return "avx512";
    }
    return "?";
}

void kernels_table_for(kernel_table *t, cpu_isa isa) {
    t->isa = isa;
    switch (isa) {
    case ISA_AVX512:
        t->dot_f32 = dot_f32_avx512;
        t->bf16_to_f32 = bf16_to_f32_avx512;
        t->f16_to_f32 = f16_to_f32_avx512;
        t->dot_wt = dot_wt_avx512;
        t->matmul_block = matmul_block_avx512;
        break;
    case ISA_AVX2:
        t->dot_f32 = dot_f32_avx2;
        t->bf16_to_f32 = bf16_to_f32_avx2;
        t->f16_to_f32 = f16_to_f32_avx2;
        t->dot_wt = dot_wt_avx2;
        t->matmul_block = matmul_block_avx2;
        break;
    case ISA_REF:
        t->dot_f32 = dot_f32_ref;
        t->bf16_to_f32 = bf16_to_f32_ref;
        t->f16_to_f32 = f16_to_f32_ref;
        t->dot_wt = dot_wt_ref;
        t->matmul_block = matmul_block_ref;
        break;
    }
}

ergo_status kernels_init(const char *requested, ergo_error *err) {
    if (!requested) requested = getenv("ERGO_ISA");
    cpu_isa best = cpu_best_isa(), isa = best;
    if (requested && *requested && strcmp(requested, "auto") != 0) {
        if (!strcmp(requested, "ref")) isa = ISA_REF;
        else if (!strcmp(requested, "avx2")) isa = ISA_AVX2;
        else if (!strcmp(requested, "avx512")) isa = ISA_AVX512;
        else
            return ergo_fail(err, ERGO_E_ARG,
                             "ERGO_ISA=%s: unknown instruction set (use ref, avx2, avx512 or auto)",
                             requested);
        if (isa > best)
            return ergo_fail(err, ERGO_E_UNSUPPORTED,
                             "ERGO_ISA=%s: this CPU supports at most %s", requested,
                             cpu_isa_name(best));
    }
    kernels_table_for(&kern, isa);
    quant_kernels_for(&qkern, isa); /* q8 / q4 kernels (quant.c) */
    attention_kernels_for(&akern, isa);
    /* ERGO_MATMUL=dot keeps one dot product per element for many rows too (the
     * engine's first path; benchmarks compare against it). Same results either way. */
    const char *mm = getenv("ERGO_MATMUL");
    if (mm && !strcmp(mm, "dot")) kern.matmul_block = NULL;
    return ERGO_OK;
}
