/* libFuzzer target for the LoRA adapter reader (adapter_config.json, a NUL, then
 * adapter_model.safetensors) against the config of tests/fixtures/lora/case.json:
 * `make fuzz`, then build/fuzz/fuzz_lora_adapter tests/fuzz_corpus/lora_adapter */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/json.h"
#include "model/config.h"
#include "model/lora_adapter.h"

static const char CONFIG[] =
    "{\"architectures\":[\"Qwen2_5_VLForConditionalGeneration\"],\"bos_token_id\":151643,"
    "\"eos_token_id\":151645,\"vision_start_token_id\":151652,\"vision_end_token_id\":151653,"
    "\"vision_token_id\":151654,\"image_token_id\":151655,\"video_token_id\":151656,"
    "\"hidden_act\":\"silu\",\"model_type\":\"qwen2_5_vl\",\"tie_word_embeddings\":false,"
    "\"vision_config\":{\"depth\":2,\"hidden_size\":32,\"num_heads\":2,\"intermediate_size\":64,"
    "\"out_hidden_size\":64,\"patch_size\":14,\"spatial_merge_size\":2,\"temporal_patch_size\":2,"
    "\"window_size\":112,\"fullatt_block_indexes\":[1],\"tokens_per_second\":2,"
    "\"hidden_act\":\"silu\",\"in_chans\":3},"
    "\"rope_scaling\":{\"type\":\"mrope\",\"mrope_section\":[2,3,3]},\"vocab_size\":152064,"
    "\"hidden_size\":64,\"intermediate_size\":128,\"num_hidden_layers\":2,"
    "\"num_attention_heads\":4,\"num_key_value_heads\":2,\"rms_norm_eps\":1e-06,"
    "\"rope_theta\":1000000.0,\"max_position_embeddings\":128000}";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static model_config cfg;
    static int ready;
    if (!ready) {
        ergo_error err = {0};
        json_t *j = json_load_bytes(CONFIG, strlen(CONFIG), "config", &err);
        if (!j || model_config_parse(&cfg, j, "config", &err)) abort();
        json_decref(j);
        ready = 1;
    }
    return lora_adapter_fuzz_one(data, size, &cfg);
}
