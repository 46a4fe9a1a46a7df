/*
 * rope.h - rotary position embeddings as the reference applies them (rotate-half,
 * f32, un-fused products), shared by both towers.
 *
 * Mirrors apply_multimodal_rotary_pos_emb / apply_rotary_pos_emb_vision
 * (transformers 4.56.2, modeling_qwen2_5_vl.py): x*cos + rotate_half(x)*sin, where
 * rotate_half pairs dim i with i + Dh/2 and both use angle i (the reference
 * duplicates its Dh/2 angles to Dh). The tables are per position (n, Dh/2); the
 * language model's come from three position streams (M-RoPE: frequency j reads the
 * t, h or w position that mrope_section gives it), the vision tower computes its
 * 2-D angles itself (model/positions.h) and uses rope_apply only.
 *
 *   rope_mrope_tables(cos, sin, pos, freq_axis, inv_freq, n, Dh / 2);
 *   rope_apply(q, H * Dh, n, H, Dh, cos, sin);   // q (n, H*Dh) in place
 */
#ifndef ERGO_ROPE_H
#define ERGO_ROPE_H

#include <stddef.h>
#include <stdint.h>

/* cos/sin (n, half) of n positions: angle = float32(pos[freq_axis[j]][i]) * inv_freq[j],
 * one float32 product as the reference's inv_freq @ position_ids (inner dimension 1). */
void rope_mrope_tables(float *cos, float *sin, const int32_t *const pos[3],
                       const int8_t *freq_axis, const float *inv_freq, int n, int half);

/* Rotates n rows in place: row i is x + i*ldx and holds `heads` heads of dh floats
 * back to back; cos/sin (n, dh/2). Threaded over rows for large n (each row is
 * computed the same way whichever thread does it). */
void rope_apply(float *x, size_t ldx, int n, int heads, int dh, const float *cos,
                const float *sin);

#endif
