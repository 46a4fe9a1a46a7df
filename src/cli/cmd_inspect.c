/*
 * cmd_inspect.c - `ergo inspect --model DIR [--json]`: load a checkpoint the way
 * every other command does (src/model/weights.c model_load: configs validated,
 * every tensor bound and shape-checked) and print the architecture it found.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "cli.h"
#include "commands.h"
#include "model/weights.h"

static void usage(FILE *out) {
    fprintf(out,
            "usage: ergo inspect --model DIR [--json]\n"
            "\n"
            "Loads the checkpoint in DIR (config.json, generation_config.json, model.safetensors\n"
            "or shards + model.safetensors.index.json), checks every tensor against the config\n"
            "and prints the architecture: layouts, dtypes, text and vision shapes, parameter\n"
            "counts. --json prints the same as one JSON object.\n");
}

static json_t *int_list(const int *v, int n) {
    json_t *a = json_array();
    for (int i = 0; i < n; i++) json_array_append_new(a, json_integer(v[i]));
    return a;
}

static void print_list(const int *v, int n) {
    printf("[");
    for (int i = 0; i < n; i++) printf("%s%d", i ? ", " : "", v[i]);
    printf("]");
}

int cmd_inspect(int argc, char **argv) {
    const char *dir = NULL;
    int as_json = 0;
    const cli_opt opts[] = {
        {"model", 'm', CLI_STR, &dir, NULL, 0, 0, 0, 0, NULL},
        {"json", 0, CLI_FLAG, &as_json, NULL, 0, 0, 0, 0, NULL},
    };
    int rc = cli_parse("inspect", opts, 2, argc, argv);
    if (rc == CLI_HELP) {
        usage(stdout);
        return 0;
    }
    if (rc) return rc;
    if (!dir) return cli_usage_error("inspect", "%s", "--model DIR is required");

    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    model m;
    ergo_error err = {0};
    if (model_load(&m, dir, &err) != ERGO_OK) {
        fprintf(stderr, "ergo inspect: %s\n", err.msg);
        return 1;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double load_ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;

    const text_config *t = &m.config.text;
    const vision_config *v = &m.config.vision;
    const generation_config *g = &m.generation;
    param_counts pc;
    weights_count(&m.weights, &m.config, &pc);
    int dtype_count[DTYPE_COUNT] = {0};
    for (int i = 0; i < m.ckpt.n_tensors; i++) dtype_count[m.ckpt.tensors[i].dtype]++;
    int n_bound = weights_spec(&m.config, NULL, NULL);
    const char *cfg_layout = m.config.layout == CONFIG_FLAT ? "flat" : "nested";

    if (as_json) {
        json_t *o = json_object();
        json_object_set_new(o, "model", json_string(dir));
        json_object_set_new(o, "config_layout", json_string(cfg_layout));
        json_object_set_new(o, "name_layout", json_string(name_layout_label(m.names)));
        json_t *files = json_array();
        for (int i = 0; i < m.ckpt.n_files; i++)
            json_array_append_new(files, json_string(checkpoint_file_name(&m.ckpt, i)));
        json_object_set_new(o, "files", files);
        json_object_set_new(o, "sharded", json_boolean(m.ckpt.sharded));
        json_object_set_new(o, "tensors", json_integer(m.ckpt.n_tensors));
        json_object_set_new(o, "tensors_used", json_integer(n_bound));
        json_t *dts = json_object();
        for (int d = 0; d < DTYPE_COUNT; d++)
            if (dtype_count[d]) json_object_set_new(dts, dtype_name((dtype)d), json_integer(dtype_count[d]));
        json_object_set_new(o, "dtypes", dts);
        json_object_set_new(
            o, "text",
            json_pack("{s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:o, s:f, s:f, s:i}", "layers",
                      t->n_layers, "hidden", t->hidden, "heads", t->n_heads, "kv_heads",
                      t->n_kv_heads, "head_dim", t->head_dim, "ffn", t->ffn, "vocab",
                      t->vocab_size, "mrope_section", int_list(t->mrope_section, 3),
                      "rope_theta", t->rope_theta, "rms_eps", t->rms_eps,
                      "max_position_embeddings", t->max_position_embeddings));
        json_object_set_new(
            o, "vision",
            json_pack("{s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:o}", "depth",
                      v->depth, "hidden", v->hidden, "heads", v->n_heads, "head_dim",
                      v->head_dim, "ffn", v->ffn, "patch", v->patch, "temporal_patch",
                      v->temporal_patch, "merge", v->merge, "window", v->window, "out_hidden",
                      v->out_hidden, "full_attention_blocks",
                      int_list(v->full_attn_blocks, v->n_full_attn)));
        json_object_set_new(o, "tied_embeddings", json_boolean(t->tie_word_embeddings));
        json_object_set_new(o, "parameters",
                            json_pack("{s:I, s:I, s:I}", "total", (json_int_t)pc.total, "text",
                                      (json_int_t)pc.text, "vision", (json_int_t)pc.vision));
        json_object_set_new(o, "bytes", json_integer((json_int_t)pc.bytes));
        json_object_set_new(o, "file_tensor_bytes", json_integer((json_int_t)m.ckpt.tensor_bytes));
        json_object_set_new(
            o, "generation",
            json_pack("{s:b, s:b, s:f, s:i, s:f, s:f, s:i, s:i, s:o, s:i, s:i}", "from_file",
                      g->from_file, "do_sample", g->do_sample, "temperature", g->temperature,
                      "top_k", g->top_k, "top_p", g->top_p, "repetition_penalty",
                      g->repetition_penalty, "max_new_tokens", g->max_new_tokens, "max_length",
                      g->max_length, "eos_token_id", int_list(g->eos_token_ids, g->n_eos),
                      "pad_token_id", g->pad_token_id, "bos_token_id", g->bos_token_id));
        json_object_set_new(o, "load_ms", json_real(load_ms));
        char *s = json_dumps(o, JSON_INDENT(2));
        if (s) printf("%s\n", s);
        free(s);
        json_decref(o);
    } else {
        printf("checkpoint    %s\n", dir);
        printf("config        %s (%s)\n", cfg_layout,
               m.config.layout == CONFIG_FLAT ? "text fields at the top level + vision_config"
                                              : "text_config + vision_config");
        printf("tensor names  %s (%s)\n", name_layout_label(m.names),
               m.names == NAMES_LEGACY ? "model.layers.N.*, visual.*"
                                       : "model.language_model.*, model.visual.*");
        printf("files         %d%s:", m.ckpt.n_files, m.ckpt.sharded ? " shards + index" : "");
        for (int i = 0; i < m.ckpt.n_files; i++) printf(" %s", checkpoint_file_name(&m.ckpt, i));
        printf("\n");
        printf("tensors       %d in files, %d used; dtypes:", m.ckpt.n_tensors, n_bound);
        for (int d = 0; d < DTYPE_COUNT; d++)
            if (dtype_count[d]) printf(" %s %d", dtype_name((dtype)d), dtype_count[d]);
        printf("\n");
        printf("text          layers %d, hidden %d, heads %d, kv heads %d, head dim %d, ffn %d, "
               "vocab %d, mrope ",
               t->n_layers, t->hidden, t->n_heads, t->n_kv_heads, t->head_dim, t->ffn,
               t->vocab_size);
        print_list(t->mrope_section, 3);
        printf(", rope theta %g, rms eps %g\n", t->rope_theta, t->rms_eps);
        printf("vision        depth %d, hidden %d, heads %d, head dim %d, ffn %d, patch %d, "
               "temporal patch %d, merge %d, window %d px, out hidden %d, full attention ",
               v->depth, v->hidden, v->n_heads, v->head_dim, v->ffn, v->patch, v->temporal_patch,
               v->merge, v->window, v->out_hidden);
        print_list(v->full_attn_blocks, v->n_full_attn);
        printf("\n");
        printf("lm_head       %s\n",
               t->tie_word_embeddings ? "tied to embed_tokens" : "untied (lm_head.weight)");
        printf("parameters    %lld (text %lld, vision %lld)\n", (long long)pc.total,
               (long long)pc.text, (long long)pc.vision);
        printf("bytes         %zu\n", pc.bytes);
        printf("generation    %s: do_sample %s, temperature %g, top_k %d, top_p %g, "
               "repetition_penalty %g, eos ",
               g->from_file ? "generation_config.json" : "defaults (no generation_config.json)",
               g->do_sample ? "true" : "false", g->temperature, g->top_k, g->top_p,
               g->repetition_penalty);
        print_list(g->eos_token_ids, g->n_eos);
        printf(", pad %d, bos %d, max_new_tokens %d\n", g->pad_token_id, g->bos_token_id,
               g->max_new_tokens);
        printf("load time     %.1f ms\n", load_ms);
    }
    model_free(&m);
    return 0;
}
