/*
 * policy_weights.c - merged LoRA weights for the rollouts (policy_weights.h).
 */
#include "policy_weights.h"

#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"

/* The base linear of layer l adapted by target t (in the struct the rollouts read). */
static weight *target_weight(text_layer_weights *L, lora_target t) {
    switch (t) {
    case LORA_Q: return &L->q_w;
    case LORA_K: return &L->k_w;
    case LORA_V: return &L->v_w;
    case LORA_O: return &L->o_w;
    case LORA_GATE: return &L->gate_w;
    case LORA_UP: return &L->up_w;
    case LORA_DOWN: return &L->down_w;
    default: return NULL;
    }
}

void policy_weights_free(policy_weights *pw) {
    for (int i = 0; pw->merged && i < pw->n; i++) free(pw->merged[i]);
    free(pw->merged);
    free(pw->w.text.layers);
    memset(pw, 0, sizeof *pw);
}

ergo_status policy_weights_init(policy_weights *pw, const train_model *tm, ergo_error *err) {
    memset(pw, 0, sizeof *pw);
    const int L = tm->cfg.text.n_layers;
    pw->w = tm->w;
    pw->n = L * LORA_N_TARGETS;
    pw->w.text.layers = malloc(sizeof *pw->w.text.layers * (size_t)L);
    pw->merged = calloc((size_t)pw->n, sizeof *pw->merged);
    if (!pw->w.text.layers || !pw->merged) {
        policy_weights_free(pw);
        return ergo_fail(err, ERGO_E_NOMEM, "out of memory for the policy's weights");
    }
    memcpy(pw->w.text.layers, tm->w.text.layers, sizeof *pw->w.text.layers * (size_t)L);
    for (int l = 0; l < L; l++)
        for (int t = 0; t < LORA_N_TARGETS; t++) {
            const lora_linear *ad = lora_at(&tm->lora, l, (lora_target)t);
            if (!ad) continue;
            weight *w = target_weight(&pw->w.text.layers[l], (lora_target)t);
            if (!w->k.data) {
                policy_weights_free(pw);
                return ergo_fail(err, ERGO_E_ARG, "layer %d %s: the base keeps only its quantised "
                                 "twin; GRPO's rollouts with LoRA need the stored weights (--weights bf16)",
                                 l, lora_target_name((lora_target)t));
            }
            float *m = malloc(sizeof(float) * (size_t)ad->out * (size_t)ad->in);
            if (!m) {
                policy_weights_free(pw);
                return ergo_fail(err, ERGO_E_NOMEM, "out of memory for layer %d's merged weights", l);
            }
            pw->merged[l * LORA_N_TARGETS + t] = m;
            w->k = (kweight){KDT_F32, m, ad->out, ad->in, NULL};
        }
    policy_weights_update(pw, tm);
    return ERGO_OK;
}

void policy_weights_update(policy_weights *pw, const train_model *tm) {
    const int L = tm->cfg.text.n_layers, r = tm->lora.rank;
    const float s = tm->lora.scale;
    for (int l = 0; l < L; l++)
        for (int t = 0; t < LORA_N_TARGETS; t++) {
            float *m = pw->merged[l * LORA_N_TARGETS + t];
            const lora_linear *ad = lora_at(&tm->lora, l, (lora_target)t);
            if (!m || !ad) continue;
            const weight *base = target_weight(&tm->w.text.layers[l], (lora_target)t);
            const int in = ad->in;
#pragma omp parallel for schedule(static)
            for (int o = 0; o < ad->out; o++) {
                float *row = m + (size_t)o * in;
                kweight_row_f32(row, &base->k, o);
                for (int k = 0; k < r; k++) {
                    const float c = s * ad->b[(size_t)o * r + k];
                    const float *a = ad->a + (size_t)k * in;
                    for (int i = 0; i < in; i++) row[i] += c * a[i];
                }
            }
        }
}
