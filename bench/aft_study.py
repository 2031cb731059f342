"""AFT experiments outside the active-learning loop (issue 14): AFT vs STL vs KD vs linear probe,
the noise test, a weak teacher next to a strong one. Writes ``<out>/results.json``; render it with
``bench/aft_report.py``.

    flock /tmp/heavy.lock python bench/aft_study.py --case fashion --seeds 0 1 2 --out runs/aft-fashion
    flock /tmp/heavy.lock python bench/aft_study.py --case wordnet --seeds 0 1 2 --out runs/aft-wordnet

Set-up (sized for 2 CPU cores; see bench/RESULTS.md, section "AFT"):

* fashion: the shipped Fashion-MNIST subset (the first 4,000 of its 6,000 training images: 800 for
  validation, 3,200 as the pool; the 1,000 test images). Downstream: a small MLP trained from scratch on the pixels
  (784 → 256 → 128, the 128-d penultimate features φ). Teachers: ImageNet EfficientNet-Lite2 and
  Lite1 at 96 px (1280-d each); the weak teacher is ImageNet Lite0 fed 32 px images.
* wordnet: the WordNet noun case (4,000 texts: 800 validation, 3,200 pool; 800 test, 26 classes).
  Downstream: a bag-of-token-embeddings network trained from scratch (MiniLM's tokenizer, 128-d
  penultimate features). Teacher: all-MiniLM-L6-v2 (384-d), the only text encoder that installs
  offline with its weights here; the weak teacher is a randomly initialised MiniLM.

Teacher features are extracted once, unaugmented, into the library's multi-model cache
(``asvp_fast.loop.storage.teachers``) and standardised per dimension over the labelled pool.
Every method trains the same network with Adam (lr 1e-3) for a fixed number of steps; AFT adds
β·AFTPrior (s learned, Adam lr 1e-2, as the authors), KD adds β·MSE of a linear map φ → ψ. β of
each is chosen on the validation split (budget 500, seed 0) from {0.3, 1, 3, 10, 30}. The linear probe
is an L2-regularised logistic regression on the teachers' features (needs the teachers at
inference; an upper reference, not a deployable small model).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from asvp_fast.loop.cases.builtin import load_fashion_mnist, wordnet_nouns_case
from asvp_fast.loop.cases.datasets import ArrayDataset, TextDataset, stack_collate
from asvp_fast.loop.models.backbones import EfficientNetLite0, MiniLM, TextCollate
from asvp_fast.loop.models.teachers import register_teacher
from asvp_fast.loop.storage.teachers import MultiModelCache
from asvp_fast.transfer import AFTPrior, FeatureRegressionKD

BETAS = (0.3, 1.0, 3.0, 10.0, 30.0)
NOISE = (0, 256, 1024, 2048)


# -- data --------------------------------------------------------------------------------------------

class Data:
    """Inputs (train = val + pool, then test), labels, and the teachers' standardised features."""

    def __init__(self, case: str, cache_root: Path, smoke: int = 0) -> None:
        self.case = case
        if case == "fashion":
            d = load_fashion_mnist()
            tr, te = (smoke, smoke // 4) if smoke else (4000, len(d["y_test"]))  # 4,000 of the 6,000: CPU time
            x = np.concatenate([d["x_train"][:tr], d["x_test"][:te]])[:, None]
            y = np.concatenate([d["y_train"][:tr], d["y_test"][:te]]).astype(np.int64)
            n_train = tr
            dataset, collate, dataset_id = ArrayDataset(x), stack_collate, f"fashion-mnist-all-{len(y)}"
            register_teacher("lite0-32px", lambda: EfficientNetLite0(image_size=32))
            self.teachers, self.weak = ["efficientnet-lite2", "efficientnet-lite1"], "lite0-32px"
            self.inputs: Any = torch.from_numpy(x.astype(np.float32) / 255.0)
            self.classes = 10
            lengths = None
        else:
            n_train, n_test = (smoke, smoke // 4) if smoke else (4000, 800)
            c = wordnet_nouns_case(pool_size=n_train, test_size=n_test, seed=0)
            texts = list(c.pool.texts) + list(c.test.texts)  # type: ignore[attr-defined]
            y = np.concatenate([c.pool_labels, c.test_labels]).astype(np.int64)
            dataset, collate, dataset_id = TextDataset(texts), TextCollate(None, 32), f"wordnet-aft-{len(y)}"
            register_teacher("minilm-random", _random_minilm)
            self.teachers, self.weak = ["all-MiniLM-L6-v2"], "minilm-random"
            tok = collate(texts)
            self.inputs = (tok["input_ids"], tok["attention_mask"])
            self.classes = 26
            lengths = None
        self.y = y
        rng = np.random.default_rng(12345)  # the split is fixed across seeds
        perm = rng.permutation(n_train)
        n_val = n_train // 5
        self.val, self.pool, self.test = perm[:n_val], perm[n_val:], np.arange(n_train, len(y))
        cache = MultiModelCache(cache_root)
        start = time.perf_counter()
        self.raw: Dict[str, np.ndarray] = {}
        for name in self.teachers + [self.weak]:
            view = cache.extract([name], dataset, collate, split="all", dataset_id=dataset_id, lengths=lengths,
                                 batch_size=128, dtype="float32", progress=False)
            self.raw[name] = np.asarray(view)
        self.extract_s = time.perf_counter() - start

    def teacher(self, names: Sequence[str], noise: int = 0, seed: int = 0) -> np.ndarray:
        """Concatenated features, standardised per dimension over the pool, plus ``noise`` N(0, 1) columns."""
        parts = []
        for name in names:
            f = self.raw[name].astype(np.float32)
            mu, sd = f[self.pool].mean(0), f[self.pool].std(0) + 1e-6
            parts.append((f - mu) / sd)
        if noise:
            parts.append(np.random.default_rng(1000 + seed).standard_normal((len(self.y), noise)).astype(np.float32))
        return np.concatenate(parts, axis=1)


def _random_minilm() -> MiniLM:
    m = MiniLM()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # BERT's random init (normal(0, 0.02) weights, zero biases), every layer
        for module in m.model.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * 0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.zero_()
    m.backbone_id = "all-MiniLM-L6-v2-random-init"
    return m


# -- downstream models ---------------------------------------------------------------------------------

class SmallMLP(nn.Module):
    """28x28 pixels → 256 → 128 (ReLU): the 128-d penultimate features φ."""

    dim = 128

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 256), nn.ReLU(), nn.Linear(256, self.dim), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BagOfTokens(nn.Module):
    """Mean of learned token embeddings (MiniLM's vocabulary) → Linear → ReLU."""

    dim = 128

    def __init__(self, vocab: int = 30522) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, 96)
        self.mlp = nn.Sequential(nn.Linear(96, self.dim), nn.ReLU())

    def forward(self, batch: Any) -> torch.Tensor:
        ids, mask = batch
        w = mask.float()[..., None]
        return self.mlp((self.emb(ids) * w).sum(1) / w.sum(1).clamp_min(1.0))


def _batch(data: Data, rows: np.ndarray) -> Any:
    if data.case == "fashion":
        return data.inputs[rows]
    ids, mask = data.inputs
    r = torch.from_numpy(rows)
    return ids[r], mask[r]


# -- training ------------------------------------------------------------------------------------------

def train(data: Data, rows: np.ndarray, method: str, psi: Optional[np.ndarray], *, seed: int, beta: float,
          steps: int, batch: int = 64) -> Dict[str, Any]:
    """Train the downstream model on ``rows`` with ``method`` in stl | aft | kd; accuracies and ρ."""
    torch.manual_seed(seed)
    body = SmallMLP() if data.case == "fashion" else BagOfTokens()
    head = nn.Linear(body.dim, data.classes)
    prior: Optional[nn.Module] = None
    if method == "aft":
        prior = AFTPrior(psi.shape[1])
    elif method == "kd":
        prior = FeatureRegressionKD(body.dim, psi.shape[1])
    opt = torch.optim.Adam([*body.parameters(), *head.parameters()], lr=1e-3)
    popt = torch.optim.Adam(prior.parameters(), lr=1e-2) if prior is not None else None
    y = torch.from_numpy(data.y)
    psi_t = torch.from_numpy(psi) if psi is not None else None
    gen = np.random.default_rng(seed + 7)
    b = min(batch, len(rows))
    order: List[int] = []
    body.train()
    for _ in range(steps):
        if len(order) < b:
            order += gen.permutation(rows).tolist()
        idx, order = np.array(order[:b]), order[b:]
        phi = body(_batch(data, idx))
        loss = nn.functional.cross_entropy(head(phi), y[idx])
        if prior is not None:
            loss = loss + beta * prior(phi, psi_t[idx])
        opt.zero_grad()
        if popt is not None:
            popt.zero_grad()
        loss.backward()
        opt.step()
        if popt is not None:
            popt.step()
    body.eval()
    out: Dict[str, Any] = {"val": _accuracy(data, body, head, data.val), "test": _accuracy(data, body, head, data.test)}
    if method == "aft":
        out["rho"] = prior.rho.numpy().tolist()  # type: ignore[union-attr]
    return out


@torch.no_grad()
def _accuracy(data: Data, body: nn.Module, head: nn.Module, rows: np.ndarray) -> float:
    pred = torch.cat([head(body(_batch(data, rows[s:s + 1000]))).argmax(1) for s in range(0, len(rows), 1000)])
    return float((pred.numpy() == data.y[rows]).mean())


def linear_probe(data: Data, rows: np.ndarray, psi: np.ndarray, seed: int) -> Dict[str, float]:
    """L2-regularised logistic regression on the teachers' features (full batch, L-BFGS)."""
    torch.manual_seed(seed)
    x, y = torch.from_numpy(psi), torch.from_numpy(data.y)
    head = nn.Linear(psi.shape[1], data.classes)
    opt = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=100, line_search_fn="strong_wolfe")
    r = torch.from_numpy(rows)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(head(x[r]), y[r]) + 1e-3 * (head.weight ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        acc = lambda rr: float((head(x[rr]).argmax(1).numpy() == data.y[rr]).mean())  # noqa: E731
        return {"val": acc(data.val), "test": acc(data.test)}


def budget_rows(data: Data, budget: int, seed: int) -> np.ndarray:
    if budget >= len(data.pool):
        return np.sort(data.pool)
    return np.sort(np.random.default_rng(seed).choice(data.pool, budget, replace=False))


# -- the study ----------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", choices=["fashion", "wordnet"], required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--budgets", type=int, nargs="+", default=[100, 500, 100000])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--cache", default="runs/aft-cache")
    ap.add_argument("--out", required=True)
    ap.add_argument("--parts", nargs="+", default=["compare", "noise", "weak"])
    ap.add_argument("--smoke", type=int, default=0, help="use only this many training rows (a quick check)")
    args = ap.parse_args()
    torch.set_num_threads(1)  # measured: 1 thread is several times faster than 2 on the shared, loaded 2-core machine
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = Data(args.case, Path(args.cache) / args.case, args.smoke)
    res: Dict[str, Any] = {"case": args.case, "steps": args.steps, "seeds": args.seeds, "extract_s": data.extract_s,
                           "sizes": {"pool": len(data.pool), "val": len(data.val), "test": len(data.test)},
                           "teachers": data.teachers, "weak_teacher": data.weak}
    sets = {"+".join(data.teachers[:1]): data.teachers[:1]}
    if len(data.teachers) > 1:
        sets["+".join(data.teachers)] = data.teachers
    # β for AFT and KD on the validation split (budget 500, seed 0, the full teacher set)
    full = list(sets.values())[-1]
    psi_full = data.teacher(full)
    rows500 = budget_rows(data, 500, 0)
    res["beta_search"] = {m: {str(b): train(data, rows500, m, psi_full, seed=0, beta=b, steps=args.steps)["val"]
                              for b in BETAS} for m in ("aft", "kd")}
    beta = {m: float(max(v, key=v.get)) for m, v in res["beta_search"].items()}
    res["beta"] = beta
    print("beta", res["beta_search"], beta, flush=True)
    if "compare" in args.parts:
        rows_out: List[Dict[str, Any]] = []
        for budget in args.budgets:
            for seed in args.seeds:
                rows = budget_rows(data, budget, seed)
                rows_out.append({"budget": len(rows), "seed": seed, "method": "stl", "teachers": "",
                                 **train(data, rows, "stl", None, seed=seed, beta=0.0, steps=args.steps)})
                for label, names in sets.items():
                    psi = data.teacher(names)
                    for m in ("aft", "kd"):
                        r = train(data, rows, m, psi, seed=seed, beta=beta[m], steps=args.steps)
                        r.pop("rho", None)
                        rows_out.append({"budget": len(rows), "seed": seed, "method": m, "teachers": label, **r})
                    rows_out.append({"budget": len(rows), "seed": seed, "method": "lp", "teachers": label,
                                     **linear_probe(data, rows, psi, seed)})
                print("compare", budget, seed, rows_out[-1], f"{time.perf_counter() - t0:.0f}s", flush=True)
        res["compare"] = rows_out
    if "noise" in args.parts:
        noise_out = []
        for k in NOISE:
            for seed in args.seeds:
                rows = budget_rows(data, 500, seed)
                psi = data.teacher(data.teachers[:1], noise=k, seed=seed)
                real = psi.shape[1] - k
                for m in ("aft", "kd"):
                    r = train(data, rows, m, psi, seed=seed, beta=beta[m], steps=args.steps)
                    if "rho" in r:
                        rho = np.array(r.pop("rho"))
                        r["rho_real_mean"], r["rho_noise_mean"] = float(rho[:real].mean()), float(rho[real:].mean()) if k else None
                        if k == max(NOISE) and seed == args.seeds[0]:
                            res["noise_rho"] = {"real": rho[:real].tolist(), "noise": rho[real:].tolist()}
                    noise_out.append({"noise": k, "seed": seed, "method": m, **r})
            print("noise", k, noise_out[-1], f"{time.perf_counter() - t0:.0f}s", flush=True)
        res["noise"] = noise_out
    if "weak" in args.parts:
        weak_out = []
        strong = data.teachers[0]
        names = [strong, data.weak]
        psi = data.teacher(names)
        d_strong = data.raw[strong].shape[1]
        for seed in args.seeds:
            rows = budget_rows(data, 500, seed)
            r = train(data, rows, "aft", psi, seed=seed, beta=beta["aft"], steps=args.steps)
            rho = np.array(r.pop("rho"))
            weak_out.append({"seed": seed, **r, "rho_strong": float(rho[:d_strong].mean()),
                             "rho_weak": float(rho[d_strong:].mean()),
                             "lp_strong": linear_probe(data, rows, data.teacher([strong]), seed)["test"],
                             "lp_weak": linear_probe(data, rows, data.teacher([data.weak]), seed)["test"],
                             "aft_strong_only": train(data, rows, "aft", data.teacher([strong]), seed=seed,
                                                      beta=beta["aft"], steps=args.steps)["test"]})
            if seed == args.seeds[0]:
                res["weak_rho"] = {"strong": rho[:d_strong].tolist(), "weak": rho[d_strong:].tolist()}
            print("weak", weak_out[-1], flush=True)
        res["weak"] = weak_out
    res["wall_s"] = time.perf_counter() - t0
    (out / "results.json").write_text(json.dumps(res))
    print(f"done in {res['wall_s']:.0f}s -> {out / 'results.json'}")


if __name__ == "__main__":
    main()
