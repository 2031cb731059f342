"""How much the diversity kernels' pruning skips on real embeddings (not synthetic clusters).

Extracts the built-in cases' features (all-MiniLM-L6-v2 on the shipped WordNet glosses,
EfficientNet-Lite0 on the shipped Fashion-MNIST images) through the feature cache, then runs
k-center greedy, k-means++ and BADGE (with an MLP proxy's logits and hidden embedding) and prints
the fraction of distance computations the triangle-inequality test skipped, with timings.

    python bench/real_features.py [--cache DIR] [--ks 50,200,1000]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from asvp_fast.acquisition.diversity import diversity_select
from asvp_fast.loop.storage.cache import FeatureCache
from asvp_fast.loop.cases.builtin import fashion_mnist_case, wordnet_nouns_case
from asvp_fast.loop.models.proxy import ProxyConfig, proxy_outputs, train_proxy


def features(case, cache_dir: Path) -> np.ndarray:
    start = time.perf_counter()
    feats = FeatureCache(cache_dir / case.name).extract(
        case.make_backbone(), case.pool, case.collate, split="pool", dataset_id=case.dataset_id,
        lengths=case.pool_lengths, batch_size=128)
    print(f"{case.name}: {feats.shape[0]} x {feats.shape[1]} features in {time.perf_counter() - start:.1f} s "
          f"(cached after the first run)")
    return np.asarray(feats)


def report(case, feats: np.ndarray, ks) -> None:
    labelled = np.random.default_rng(0).choice(len(feats), 200, replace=False)
    proxy = train_proxy(feats, labelled, case.pool_labels[labelled], case.num_classes, ProxyConfig(), seed=0)
    logits, hidden = proxy_outputs(proxy, feats)
    print("| case | method | k | skipped | seconds |\n|---|---|---:|---:|---:|")
    runs = (("kcenter", feats, {}), ("kmeans_pp", feats, {}), ("badge", hidden, {"x": logits, "from_logits": True}))
    for method, space, kwargs in runs:
        for k in ks:
            start = time.perf_counter()
            r = diversity_select(method, space, k, **kwargs)  # type: ignore[arg-type]
            print(f"| {case.name} | {method} | {k} | {100 * r.skipped_fraction:.1f}% | {time.perf_counter() - start:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default="bench-cache", help="feature cache directory (reused between runs)")
    parser.add_argument("--ks", default="50,200,1000")
    args = parser.parse_args()
    ks = [int(k) for k in args.ks.split(",")]
    for case in (wordnet_nouns_case(pool_size=11000, test_size=1000), fashion_mnist_case(pool_size=6000, test_size=1000)):
        report(case, features(case, Path(args.cache)), ks)


if __name__ == "__main__":
    main()
