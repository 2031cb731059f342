"""The 1,000,000 x 384 float16 pool of bench/features_1m/features_1m.toml: 10 Gaussian classes
(centres 0.06 * N(0, I), unit noise), written chunk by chunk into pool.npy (768 MB) beside this
script, with pool_labels.npy. Run: python bench/features_1m/make_pool.py"""

import os

import numpy as np

os.chdir(os.path.dirname(os.path.abspath(__file__)))
n, d, c = 1_000_000, 384, 10
rng = np.random.default_rng(0)
centres = rng.normal(size=(c, d)).astype(np.float32) * 0.06
feats = np.lib.format.open_memmap("pool.npy", mode="w+", dtype=np.float16, shape=(n, d))
labels = rng.integers(0, c, size=n).astype(np.int64)
for s in range(0, n, 100_000):
    e = min(n, s + 100_000)
    x = centres[labels[s:e]] + rng.normal(size=(e - s, d)).astype(np.float32)
    feats[s:e] = x.astype(np.float16)
feats.flush()
np.save("pool_labels.npy", labels)
