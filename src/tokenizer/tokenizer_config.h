/*
 * tokenizer_config.h - tokenizer_config.json, read next to tokenizer.json: the
 * settings with which transformers 4.56.2 builds Qwen2TokenizerFast
 * (PreTrainedTokenizerFast.__init__, PreTrainedTokenizerBase.__init__ and
 * _from_pretrained in tokenization_utils_{fast,base}.py) that change encoding
 * or decoding:
 *   clean_up_tokenization_spaces  decode applies clean_up_tokenization (implemented)
 *   split_special_tokens          special tokens in text are plain text (implemented)
 *   model_max_length / max_len    exposed; changes nothing unless one truncates
 *   the special tokens            bos/eos/unk/pad/sep/cls/mask_token,
 *                                 additional_special_tokens, extra_special_tokens:
 *                                 added tokens they name become special (implemented);
 *                                 a name that is not an added token of tokenizer.json
 *                                 would be added as a new token (refused)
 *   added_tokens_decoder          re-added over tokenizer.json's: must agree with it
 *   add_prefix_space              ignored over a Sequence pre-tokenizer, as the
 *                                 reference does; true over a single one is refused
 *   add_bos_token, add_eos_token  ignored: Qwen2TokenizerFast does not act on them
 *   tokenizer_class               Qwen2Tokenizer(Fast) only (another class is refused)
 * Settings that only matter for padding, truncation or the chat template are
 * not read here.
 */
#ifndef ERGO_TOKENIZER_CONFIG_H
#define ERGO_TOKENIZER_CONFIG_H

#include <stddef.h>

#include "base/status.h"
#include "tokenizer/added_tokens.h"
#include "tokenizer/tokenizer.h"

/* Checks the config at json[0..len) (`what` names it in messages) against the
 * added tokens of tokenizer.json, fills *s and marks the added tokens the config
 * names as special tokens special. `dir` is where special_tokens_map.json and
 * added_tokens.json would be (NULL: not looked for); `single_pre`: tokenizer.json's
 * pre_tokenizer is one step rather than a Sequence. */
ergo_status tokconfig_apply(const char *json, size_t len, const char *what, const char *dir,
                            added_vocab *added, int single_pre, tokenizer_settings *s,
                            ergo_error *err);

/* The settings when there is no tokenizer_config.json. */
void tokconfig_defaults(tokenizer_settings *s);

/* transformers' clean_up_tokenization over t->s[from..t->n), in place. */
void tokconfig_clean_up(tok_text *t, size_t from);

/* The length of the longest prefix of s[0..n) whose clean-up cannot change
 * whatever text follows (for streaming decode). */
size_t tokconfig_clean_up_stable(const char *s, size_t n);

#endif
