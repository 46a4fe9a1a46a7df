"""The counter-based generator shared with src/base/rng.h (numpy, bit-exact).

Value i of stream `seed` is splitmix64's mixer applied to seed + (i + 1) * gamma;
floats are (top 24 bits - 2**23) / 2**23, exact in float32. Streams are named:
rng_stream_seed(seed, "model.layers.0.mlp.up_proj.weight").
"""
import numpy as np

GAMMA = np.uint64(0x9E3779B97F4A7C15)
M1 = np.uint64(0xBF58476D1CE4E5B9)
M2 = np.uint64(0x94D049BB133111EB)
MASK = (1 << 64) - 1


def _mix(z):
    z = (z ^ (z >> np.uint64(30))) * M1
    z = (z ^ (z >> np.uint64(27))) * M2
    return z ^ (z >> np.uint64(31))


def u64(seed: int, index: np.ndarray) -> np.ndarray:
    """splitmix64 values number `index` (uint64 array) of stream `seed`."""
    with np.errstate(over="ignore"):
        z = np.uint64(seed & MASK) + (index.astype(np.uint64) + np.uint64(1)) * GAMMA
        return _mix(z)


def uniform(seed: int, n: int, start: int = 0) -> np.ndarray:
    """n float32 values in [-1, 1): values start..start+n-1 of the stream."""
    idx = np.arange(start, start + n, dtype=np.uint64)
    k = (u64(seed, idx) >> np.uint64(40)).astype(np.int64) - (1 << 23)
    return k.astype(np.float32) * np.float32(1.0 / 8388608.0)


def fnv1a(s: str) -> int:
    h = 0xCBF29CE484222325
    for b in s.encode("utf-8"):
        h = ((h ^ b) * 0x100000001B3) & MASK
    return h


def stream_seed(seed: int, name: str) -> int:
    return int(u64(seed, np.array([fnv1a(name)], dtype=np.uint64))[0])


if __name__ == "__main__":
    # The same known values tests/test_base.c checks.
    assert int(u64(0, np.array([0], dtype=np.uint64))[0]) == 0xE220A8397B1DCDAF
    assert int(u64(0, np.array([1], dtype=np.uint64))[0]) == 0x6E789E6AA1B965F4
    assert fnv1a("a") == 0xAF63DC4C8601EC8C
    print("ok")
