/*
 * dispatch.c - picks each kernel's instruction set once at start-up.
 */
#include <cpuid.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "quant.h"
#include "attention.h"

kernel_table kern = {ISA_REF,          COMPUTE_F32,     dot_f32_ref, bf16_to_f32_ref,
                     f16_to_f32_ref,   dot_wt_ref,      matmul_block_ref,
                     matmul_bf16_block_ref};

static int leaf7(int reg, unsigned bit, unsigned subleaf) {
    unsigned r[4];
    if (!__get_cpuid_count(7, subleaf, &r[0], &r[1], &r[2], &r[3])) return 0;
    return (r[reg] & bit) != 0;
}

static cpu_features detect(void) {
    cpu_features f = {0};
    unsigned a, b, c, d;
    __builtin_cpu_init();
    f.avx2 = __builtin_cpu_supports("avx2");
    f.fma = __builtin_cpu_supports("fma");
    f.f16c = __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C); /* CPUID.1:ECX bit 29 */
    f.avx512f = __builtin_cpu_supports("avx512f");
    f.avx512bw = __builtin_cpu_supports("avx512bw");
    f.avx512vl = __builtin_cpu_supports("avx512vl");
    /* CPUID.(7,0):ECX bit 11 = AVX512_VNNI; CPUID.(7,1):EAX bit 5 = AVX512_BF16;
     * CPUID.(7,0):EDX bits 22, 24, 25 = AMX-BF16, AMX-TILE, AMX-INT8 */
    f.avx512vnni = f.avx512f && leaf7(2, 1u << 11, 0);
    f.avx512bf16 = f.avx512f && leaf7(0, 1u << 5, 1);
    f.amx_bf16 = leaf7(3, 1u << 22, 0);
    f.amx_tile = leaf7(3, 1u << 24, 0);
    f.amx_int8 = leaf7(3, 1u << 25, 0);
    return f;
}

const cpu_features *cpu_features_get(void) {
    static cpu_features f;
    static int done;
#pragma omp critical(ergo_cpu_features)
    if (!done) {
        f = detect();
        done = 1;
    }
    return &f;
}

cpu_isa cpu_best_isa(void) {
    const cpu_features *f = cpu_features_get();
    if (f->avx512f && f->avx512bw && f->avx512vl) return ISA_AVX512;
    if (f->avx2 && f->fma && f->f16c) return ISA_AVX2;
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
    t->compute = COMPUTE_F32;
    t->matmul_bf16_block = NULL;
    switch (isa) {
    case ISA_AVX512:
        t->dot_f32 = dot_f32_avx512;
        t->bf16_to_f32 = bf16_to_f32_avx512;
        t->f16_to_f32 = f16_to_f32_avx512;
        t->dot_wt = dot_wt_avx512;
        t->matmul_block = matmul_block_avx512;
        t->matmul_bf16_block =
            cpu_features_get()->avx512bf16 ? matmul_bf16_block_avx512bf16 : NULL;
        break;
    case ISA_AVX2:
        t->dot_f32 = dot_f32_avx2;
        t->bf16_to_f32 = bf16_to_f32_avx2;
        t->f16_to_f32 = f16_to_f32_avx2;
        t->dot_wt = dot_wt_avx2;
        t->matmul_block = matmul_block_avx2;
        t->matmul_bf16_block = NULL; /* no bf16 dot product: --compute bf16 is refused */
        break;
    case ISA_REF:
        t->dot_f32 = dot_f32_ref;
        t->bf16_to_f32 = bf16_to_f32_ref;
        t->f16_to_f32 = f16_to_f32_ref;
        t->dot_wt = dot_wt_ref;
        t->matmul_block = matmul_block_ref;
        t->matmul_bf16_block = matmul_bf16_block_ref; /* slow, but the definition */
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
    return kernels_set_compute(NULL, err);
}

const char *compute_mode_name(compute_mode c) { return c == COMPUTE_BF16 ? "bf16" : "f32"; }

compute_mode compute_default(void) {
    kernel_table t;
    kernels_table_for(&t, cpu_best_isa());
    return t.matmul_bf16_block && t.isa != ISA_REF ? COMPUTE_BF16 : COMPUTE_F32;
}

ergo_status kernels_set_compute(const char *requested, ergo_error *err) {
    if (!requested || !*requested) requested = getenv("ERGO_COMPUTE");
    compute_mode c;
    if (!requested || !*requested || !strcmp(requested, "auto"))
        c = kern.isa != ISA_REF && kern.matmul_bf16_block ? compute_default() : COMPUTE_F32;
    else if (!strcmp(requested, "f32")) c = COMPUTE_F32;
    else if (!strcmp(requested, "bf16")) c = COMPUTE_BF16;
    else
        return ergo_fail(err, ERGO_E_ARG, "--compute %s: unknown (use f32, bf16 or auto)",
                         requested);
    if (c == COMPUTE_BF16 && !kern.matmul_bf16_block)
        return ergo_fail(err, ERGO_E_UNSUPPORTED,
                         "--compute bf16: this CPU (ISA %s) has no bf16 dot-product instructions "
                         "(AVX-512 BF16); use --compute f32",
                         cpu_isa_name(kern.isa));
    kern.compute = c;
    attention_kernels_for_compute(&akern, kern.isa, c);
    return ERGO_OK;
}
