/*
 * reward_fuzz.c - the fuzz entry point of the format reward (fuzz/fuzz_reward_format.c
 * and the corpus replay in tests/test_reward.c): the input up to its first NUL byte is
 * turn 1, the rest turn 2. Traps when the scores break what reward.h promises: each in
 * [0, 1], partial scores in sixths, a full match scoring 1 under both rules, and the
 * box reward agreeing with the parser.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "train/reward.h"

int reward_fuzz_one(const uint8_t *data, size_t size) {
    char *buf = malloc(size + 2);
    if (!buf) return 0;
    memcpy(buf, data, size);
    buf[size] = buf[size + 1] = 0;
    const char *t1 = buf, *t2 = buf + strlen(buf) + 1; /* "" when there is no NUL */
    for (int turn = 1; turn <= 2; turn++) {
        const char *t = turn == 1 ? t1 : t2;
        double full = reward_format_turn(REWARD_FORMAT_FULL_MATCH, turn, t);
        double part = reward_format_turn(REWARD_FORMAT_PARTIAL, turn, t);
        if ((full != 0 && full != 1) || part < 0 || part > 1 || fabs(part * 3 - nearbyint(part * 3)) > 1e-9 ||
            (full == 1 && part != 1))
            __builtin_trap();
    }
    double f = reward_format(REWARD_FORMAT_FULL_MATCH, t1, t2), p = reward_format(REWARD_FORMAT_PARTIAL, t1, t2);
    if ((f != 0 && f != 1) || p < 0 || p > 1 || (f == 1 && p != 1)) __builtin_trap();
    zoom_crop c;
    zoom_status s = reward_box_of(t1, 5.0, 5.0, 1000, 1000, 64 * 28 * 28, &c);
    double ratio;
    int rb = reward_box(s, &c, 1000, 1000, 0.6, &ratio);
    if ((s != ZOOM_OK && (rb || ratio != 0)) || ratio < 0 || ratio > 1 || rb != (s == ZOOM_OK && ratio <= 0.6))
        __builtin_trap();
    free(buf);
    return 0;
}
