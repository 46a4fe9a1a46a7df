/*
 * ergo.c - ERGO's two stages on one session, and the one-pass baseline.
 * Mirrors ERGO's src/ergo/infer.py (preprocess_image, build_initial_messages,
 * generate_once, crop_with_zoom, the stage-2 messages) and src/ergo/const.py,
 * with transformers 4.56.2's apply_chat_template + processor + generate underneath.
 */
#include "base/clock.h"
#include "pipeline/ergo.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <utf8proc.h>

const char ergo_system_prompt[] =
    "You are a helpful assistant. Given an image and one question. First, identify the "
    "coordinates of the key image area relevant to solving the problem. Append the "
    "coordinates in [x1, y1, x2, y2] format at the end of your response and stop. This will "
    "trigger cropping of the corresponding area in the original image and enlarge it for "
    "improved clarity. Once the enlarged image is available, provide the final answer.";
const char ergo_template1_suffix[] =
    " First, consider how to zoom in on the image to include only the region containing all "
    "the information necessary to answer the question. Output the thinking process in "
    "<think> </think> tags and then output the region's bounding box coordinates in the "
    "following format <zoom>[x1, y1, x2, y2]</zoom> tags.";
const char ergo_template2_suffix[] =
    "\nCarefully analyze both the original image and the enlarged sub-image to solve the "
    "question step by step. Present your reasoning clearly the following format strictly "
    "<think> ... <think>, and provide the final answer enclosed within <answer> ... </answer>";

const char *ergo_view_name(ergo_view v) {
    switch (v) {
    case ERGO_VIEW_CROP: return "crop";
    case ERGO_VIEW_FALLBACK_FULL: return "fallback_full";
    case ERGO_VIEW_FALLBACK_DOWNSAMPLED: return "fallback_downsampled";
    }
    return "?";
}

void ergo_options_default(ergo_options *o) {
    memset(o, 0, sizeof *o);
    o->max_vision_tokens = 1280;
    o->max_new_tokens = 1024;
    o->fallback = ERGO_FALLBACK_FULL;
}

void ergo_result_free(ergo_result *r) {
    ergo_stage *st[2] = {&r->s1, &r->s2};
    for (int i = 0; i < 2; i++) {
        tok_ids_free(&st[i]->ids);
        free(st[i]->text);
    }
    image_free(&r->stage1_image);
    image_free(&r->stage2_image);
    free(r->answer);
    tok_ids_free(&r->conversation);
    free(r->stage2_logits);
    memset(r, 0, sizeof *r);
}

/* Python's str.strip() bounds of [s, s+n). */
static void py_strip(const char *s, size_t n, size_t *b, size_t *e) {
    size_t i = 0, j = n;
    while (i < j) {
        utf8proc_int32_t c;
        utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)s + i, j - i, &c);
        if (k <= 0 || !zoom_is_space(c)) break;
        i += (size_t)k;
    }
    while (j > i) { /* step back over one code point */
        size_t k = j - 1;
        while (k > i && ((unsigned char)s[k] & 0xC0) == 0x80) k--;
        utf8proc_int32_t c;
        if (utf8proc_iterate((const utf8proc_uint8_t *)s + k, j - k, &c) != (utf8proc_ssize_t)(j - k) ||
            !zoom_is_space(c))
            break;
        j = k;
    }
    *b = i;
    *e = j;
}

char *ergo_extract_answer(const char *text) {
    const char *a = strstr(text, "<answer>");
    size_t b = 0, e = strlen(text);
    const char *base = text;
    if (a) {
        base = a + 8;
        const char *z = strstr(base, "</answer>");
        py_strip(base, z ? (size_t)(z - base) : strlen(base), &b, &e);
    }
    char *out = malloc(e - b + 1);
    if (!out) return NULL;
    memcpy(out, base + b, e - b);
    out[e - b] = '\0';
    return out;
}

char *ergo_full_question(const ergo_question *q) {
    size_t n = strlen(q->question) + 3 + (q->postfix ? strlen(q->postfix) : 0);
    for (int i = 0; i < q->n_options; i++) n += strlen(q->options[i]) + 1;
    char *out = malloc(n);
    if (!out) return NULL;
    strcpy(out, q->question);
    if (q->n_options || q->postfix) {
        strcat(out, "\n");
        for (int i = 0; i < q->n_options; i++) {
            if (i) strcat(out, "\n");
            strcat(out, q->options[i]);
        }
        strcat(out, "\n");
        if (q->postfix) strcat(out, q->postfix);
    }
    return out;
}

static char *concat(const char *a, const char *b) {
    size_t na = strlen(a), nb = strlen(b);
    char *out = malloc(na + nb + 1);
    if (!out) return NULL;
    memcpy(out, a, na);
    memcpy(out + na, b, nb + 1);
    return out;
}

/* One image's vision rows (the processor within its limits, then the encoder),
 * recorded in the stage. The rows are the caller's (context_image_free). */
static ergo_status encode_image(context *c, const image *img, context_image *im,
                                ergo_stage *stage, ergo_error *err) {
    ergo_status s = context_encode_image(c, img, NULL, im, err);
    stage->image_ms += im->image_ms;
    stage->vision_ms += im->vision_ms;
    stage->image_w = im->width;
    stage->image_h = im->height;
    stage->grid_t = im->grid.t;
    stage->grid_h = im->grid.h;
    stage->grid_w = im->grid.w;
    stage->processor_resized = im->processor_resized;
    stage->vision_tokens = im->tokens;
    stage->vision_encodes += im->rows != NULL;
    return s;
}

/* Appends one stage's prompt (with its image) to the session; the logits of its
 * last token come back in *logits (c's buffer). */
static ergo_status prefill(context *c, session *ss, const tok_ids *ids, const mrope_grid *grid,
                           const float *rows, ergo_stage *stage, float **logits,
                           ergo_error *err) {
    context_piece p = {ids->v, (int)ids->n, grid, grid ? 1 : 0, rows};
    context_prefill_out out;
    ergo_status s = context_prefill(c, ss, &p, &out, err);
    stage->prefill_ms = out.ms;
    stage->prompt_tokens = (int)ids->n;
    stage->context_tokens = ss->n_cached;
    *logits = out.logits;
    return s;
}

/* Greedy decoding of one stage from the prompt's logits; `fixed` > 0 generates
 * exactly that many tokens, stop ids ignored (benchmarks: equal lengths whatever
 * the weights say). */
static ergo_status decode(context *c, const ergo_options *o, int fixed, session *ss,
                          const float *logits, ergo_stage *stage, ergo_error *err) {
    const engine *e = c->e;
    generate_params gp = {{0}, o->max_new_tokens, e->stop_ids, e->n_stop_ids, NULL, 0};
    if (fixed > 0) {
        gp.max_new_tokens = fixed;
        gp.n_stop_ids = 0;
    }
    sampler_config_from_generation(&gp.sampling, &e->m.generation);
    gp.sampling.do_sample = 0; /* the reference evaluation decodes greedily */
    generate_result res = {0};
    ergo_status s = context_generate(c, ss, logits, &gp, o->on_text, o->on_text_ctx, &res, err);
    if (!s) {
        stage->ids = res.tokens;
        res.tokens = (tok_ids){0};
        stage->text = concat(res.text.s ? res.text.s : "", "");
        if (!stage->text) s = ergo_fail(err, ERGO_E_NOMEM, "out of memory");
        stage->reason = res.reason;
        stage->decode_ms = res.decode_ms;
    }
    generate_result_free(&res);
    if (!s && stage->reason == STOP_CONTEXT)
        s = ergo_fail(err, ERGO_E_LIMIT, "the conversation filled the context of %d tokens",
                      ss->max_context);
    return s;
}

/* ERGO needs the whole engine, not a model alone. */
static ergo_status check_engine(const engine *e, ergo_error *err) {
    if (!e->tok || !e->has_chat_template)
        return ergo_fail(err, ERGO_E_ARG, "ERGO needs an engine with a tokenizer and a chat "
                                          "template (engine_load without model_only)");
    return ERGO_OK;
}

/* The tokens of an assistant turn's closing (what the template puts after the
 * content: "<|im_end|>\n"), rendered by the template so the chat state advances. */
static ergo_status encode_assistant_closing(const engine *e, chat_state *cs, tok_ids *ids,
                                            ergo_error *err) {
    tok_text txt = {0}, gen = {0};
    chat_message m = {"assistant", "", 0, NULL, 0};
    ergo_status s = chat_render_message(&e->ct, cs, &m, 0, &txt, err);
    if (!s) s = chat_render_generation_prompt(&gen, err);
    if (!s && (txt.n < gen.n || memcmp(txt.s, gen.s, gen.n)))
        s = ergo_fail(err, ERGO_E_FORMAT, "the chat template's assistant turn does not start "
                                          "with its generation prompt");
    if (!s) s = tokenizer_encode(e->tok, txt.s + gen.n, txt.n - gen.n, ids, err);
    tok_text_free(&txt);
    tok_text_free(&gen);
    return s;
}

ergo_status ergo_stage1_prompt(const engine *e, chat_state *cs, const char *question,
                               int64_t vision_tokens, tok_ids *ids, ergo_error *err) {
    ergo_status s = check_engine(e, err);
    if (s) return s;
    char *t1 = concat(question, ergo_template1_suffix);
    if (!t1) return ergo_fail(err, ERGO_E_NOMEM, "out of memory");
    chat_part p1[2] = {{CHAT_IMAGE, NULL, 0, (int32_t)vision_tokens}, {CHAT_TEXT, t1, strlen(t1), 0}};
    chat_message sys = {"system", ergo_system_prompt, strlen(ergo_system_prompt), NULL, 0};
    chat_message u1 = {"user", NULL, 0, p1, 2};
    s = chat_encode_message(&e->ct, e->tok, cs, &sys, ids, err);
    if (!s) s = chat_encode_message(&e->ct, e->tok, cs, &u1, ids, err);
    if (!s) s = chat_encode_generation_prompt(e->tok, ids, err);
    free(t1);
    return s;
}

ergo_status ergo_stage2_prompt(const engine *e, chat_state *cs, const ergo_question *q,
                               int64_t vision_tokens, tok_ids *ids, ergo_error *err) {
    ergo_status s = check_engine(e, err);
    if (s) return s;
    char *full_q = ergo_full_question(q), *t2 = full_q ? concat(full_q, ergo_template2_suffix) : NULL;
    if (!t2) s = ergo_fail(err, ERGO_E_NOMEM, "out of memory");
    if (!s) s = encode_assistant_closing(e, cs, ids, err);
    chat_part p2[2] = {{CHAT_IMAGE, NULL, 0, (int32_t)vision_tokens},
                       {CHAT_TEXT, t2, t2 ? strlen(t2) : 0, 0}};
    chat_message u2 = {"user", NULL, 0, p2, 2};
    if (!s) s = chat_encode_message(&e->ct, e->tok, cs, &u2, ids, err);
    if (!s) s = chat_encode_generation_prompt(e->tok, ids, err);
    free(full_q);
    free(t2);
    return s;
}

static ergo_status keep_conversation(const session *ss, ergo_result *r, ergo_error *err) {
    r->conversation.n = 0;
    for (int i = 0; i < ss->n_cached; i++) {
        ergo_status s = tok_ids_push(&r->conversation, ss->tokens[i], err);
        if (s) return s;
    }
    return ERGO_OK;
}

ergo_status ergo_run(context *c, const ergo_options *o, const image *original,
                     const ergo_question *q, ergo_result *r, ergo_error *err) {
    memset(r, 0, sizeof *r);
    const engine *e = c->e;
    const model_config *cfg = &e->m.config;
    const int64_t max_pixels = (int64_t)o->max_vision_tokens * ERGO_FACTOR * ERGO_FACTOR;
    r->width = original->width;
    r->height = original->height;
    session ss;
    int ss_ready = 0;
    context_image im1 = {0}, im2 = {0};
    float *logits = NULL; /* (V) the last prefill's, in c */
    tok_ids ids = {0};
    chat_state cs = {0};
    mrope_grid g2;
    ergo_status s = check_engine(e, err);
    if (s) return s;

    /* stage 1: ERGO's smart_resize + Pillow BICUBIC, then the processor */
    double t0 = now_ms();
    s = smart_resize_ergo(r->height, r->width, ERGO_FACTOR, ERGO_MIN_PIXELS, max_pixels, &r->h1,
                          &r->w1, err);
    if (!s) s = image_resize(&r->stage1_image, original, r->w1, r->h1, IMAGE_FILTER_BICUBIC, err);
    r->s1.image_ms = now_ms() - t0;
    if (s) goto done;
    r->sx = (double)r->width / r->w1;
    r->sy = (double)r->height / r->h1;
    if ((s = encode_image(c, &r->stage1_image, &im1, &r->s1, err))) goto done;
    r->s1.ran = 1;

    /* system, user [image, TEMPLATE1(question)], generation prompt */
    if ((s = ergo_stage1_prompt(e, &cs, q->question, r->s1.vision_tokens, &ids, err))) goto done;
    if ((s = context_session_init(c, &ss, err))) goto done;
    ss_ready = 1;
    if ((s = prefill(c, &ss, &ids, &im1.grid, im1.rows, &r->s1, &logits, err))) goto done;

    /* stage-1 response: generated, or forced (its tokens appended as if generated) */
    int pending = 0; /* generated ids at the end of s1.ids not yet in the session */
    if (o->stage1_text) {
        if (!(r->s1.text = concat(o->stage1_text, ""))) goto nomem;
        if ((s = tokenizer_encode(e->tok, o->stage1_text, strlen(o->stage1_text), &r->s1.ids, err)))
            goto done;
        r->s1.reason = STOP_NONE;
        pending = (int)r->s1.ids.n;
        if (o->on_text) o->on_text(o->on_text_ctx, o->stage1_text, strlen(o->stage1_text));
    } else {
        if ((s = decode(c, o, o->fixed_tokens[0], &ss, logits, &r->s1, err))) goto done;
        /* the stop id is left out (the template closes the turn itself); a run cut
         * by the length limit still owes its last token */
        pending = r->s1.reason == STOP_EOS ? 0 : r->s1.ids.n > 0;
    }
    {
        tok_ids again = {0};
        s = tokenizer_encode(e->tok, r->s1.text, strlen(r->s1.text), &again, err);
        size_t kept = r->s1.ids.n - (r->s1.reason == STOP_EOS ? 1 : 0);
        r->stage1_retokenizes =
            !s && again.n == kept && !memcmp(again.v, r->s1.ids.v, kept * sizeof *again.v);
        tok_ids_free(&again);
        if (s) goto done;
    }

    /* the box, mapped to the original, and the crop (Pillow LANCZOS) */
    const char *box_text = o->box_text ? o->box_text : r->s1.text;
    r->box_status = zoom_parse(box_text, strlen(box_text), &r->box);
    if (r->box_status == ZOOM_OK)
        r->box_status = zoom_map(&r->box, r->sx, r->sy, r->width, r->height, ERGO_FACTOR,
                                 ERGO_MIN_PIXELS, max_pixels, &r->crop);
    t0 = now_ms();
    if (r->box_status == ZOOM_OK) {
        image cut = {0};
        r->view = ERGO_VIEW_CROP;
        s = image_crop(&cut, original, r->crop.x1, r->crop.y1, r->crop.x2, r->crop.y2, err);
        if (!s)
            s = image_resize(&r->stage2_image, &cut, r->crop.out_w, r->crop.out_h,
                             IMAGE_FILTER_LANCZOS, err);
        image_free(&cut);
    } else if (o->fallback == ERGO_FALLBACK_FULL) {
        r->view = ERGO_VIEW_FALLBACK_FULL; /* the reference: the whole original */
        s = image_crop(&r->stage2_image, original, 0, 0, r->width, r->height, err);
    } else {
        r->view = ERGO_VIEW_FALLBACK_DOWNSAMPLED;
        s = image_crop(&r->stage2_image, &r->stage1_image, 0, 0, r->w1, r->h1, err);
    }
    if (!s && o->stage2_image) { /* a probe: stage 2 sees another image, encoded anew */
        image alt = {0};
        s = o->stage2_image(o->stage2_image_ctx, original, &r->stage1_image, &alt, err);
        image_free(&r->stage2_image);
        r->stage2_image = alt;
        if (r->view == ERGO_VIEW_FALLBACK_DOWNSAMPLED) r->view = ERGO_VIEW_FALLBACK_FULL;
    }
    r->s2.image_ms = now_ms() - t0;
    if (s) goto done;
    if (o->on_stage1) o->on_stage1(o->on_text_ctx, r);
    r->s2.ran = 1;
    if (r->view == ERGO_VIEW_FALLBACK_DOWNSAMPLED) { /* same image: same rows, no encode */
        g2 = im1.grid;
        r->s2.image_w = r->s1.image_w;
        r->s2.image_h = r->s1.image_h;
        r->s2.grid_t = g2.t;
        r->s2.grid_h = g2.h;
        r->s2.grid_w = g2.w;
        r->s2.vision_tokens = r->s1.vision_tokens;
        r->s2.vision_reused = 1;
    } else if ((s = encode_image(c, &r->stage2_image, &im2, &r->s2, err))) {
        goto done;
    } else {
        g2 = im2.grid;
    }

    /* stage 2: [owed stage-1 ids] "<|im_end|>\n", user [image, TEMPLATE2(full question)],
     * generation prompt, appended to the live session */
    ids.n = 0;
    for (size_t i = r->s1.ids.n - (size_t)pending; i < r->s1.ids.n; i++)
        if ((s = tok_ids_push(&ids, r->s1.ids.v[i], err))) goto done;
    if ((s = ergo_stage2_prompt(e, &cs, q, r->s2.vision_tokens, &ids, err))) goto done;
    if ((s = prefill(c, &ss, &ids, &g2, im2.rows ? im2.rows : im1.rows, &r->s2, &logits, err)))
        goto done;
    if ((s = keep_conversation(&ss, r, err))) goto done;
    if (o->keep_logits) {
        size_t bytes = sizeof *logits * (size_t)cfg->text.vocab_size;
        if (!(r->stage2_logits = malloc(bytes))) goto nomem;
        memcpy(r->stage2_logits, logits, bytes);
    }
    if ((s = decode(c, o, o->fixed_tokens[1], &ss, logits, &r->s2, err))) goto done;
    if (!(r->answer = ergo_extract_answer(r->s2.text))) goto nomem;
    goto done;
nomem:
    s = ergo_fail(err, ERGO_E_NOMEM, "out of memory");
done:
    if (ss_ready) session_free(&ss);
    context_image_free(&im1);
    context_image_free(&im2);
    tok_ids_free(&ids);
    return s;
}

ergo_status ergo_run_baseline(context *c, const ergo_options *o, const image *original,
                              const ergo_question *q, ergo_result *r, ergo_error *err) {
    memset(r, 0, sizeof *r);
    const engine *e = c->e;
    r->baseline = 1;
    r->width = original->width;
    r->height = original->height;
    r->box_status = ZOOM_NONE;
    context_image im = {0};
    float *logits = NULL;
    char *full_q = NULL;
    tok_ids ids = {0};
    chat_state cs = {0};
    session ss;
    int ss_ready = 0;
    ergo_status s = check_engine(e, err);
    if (s) return s;
    if ((s = encode_image(c, original, &im, &r->s1, err))) goto done;
    r->s1.ran = 1;
    if (!(full_q = ergo_full_question(q))) {
        s = ergo_fail(err, ERGO_E_NOMEM, "out of memory");
        goto done;
    }
    chat_part p[2] = {{CHAT_IMAGE, NULL, 0, (int32_t)r->s1.vision_tokens},
                      {CHAT_TEXT, full_q, strlen(full_q), 0}};
    chat_message u = {"user", NULL, 0, p, 2};
    if ((s = chat_encode_message(&e->ct, e->tok, &cs, &u, &ids, err))) goto done;
    if ((s = chat_encode_generation_prompt(e->tok, &ids, err))) goto done;
    if ((s = context_session_init(c, &ss, err))) goto done;
    ss_ready = 1;
    if ((s = prefill(c, &ss, &ids, &im.grid, im.rows, &r->s1, &logits, err))) goto done;
    if ((s = keep_conversation(&ss, r, err))) goto done;
    if ((s = decode(c, o, o->fixed_tokens[2], &ss, logits, &r->s1, err))) goto done;
    if (!(r->answer = ergo_extract_answer(r->s1.text)))
        s = ergo_fail(err, ERGO_E_NOMEM, "out of memory");
done:
    if (ss_ready) session_free(&ss);
    context_image_free(&im);
    free(full_q);
    tok_ids_free(&ids);
    return s;
}
