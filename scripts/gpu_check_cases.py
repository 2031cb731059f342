"""The cases of scripts/gpu_check.py: GPU against CPU at scale, exact parity, layouts, edge cases,
streams, callbacks, memory, and timings next to the roofline estimate (bench/RESULTS.md).

Each case raises on a failure and returns details for the report. Needs torch with CUDA.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List

import numpy as np
import torch

import asvp_fast as af
import asvp_fast._C as _C
from asvp_fast.acquisition.diversity import diversity_select

KINDS = ("margin", "entropy", "least_confidence")
Details = Dict[str, Any]


def own_order(scores: np.ndarray, k: int, kind: str, excluded: np.ndarray) -> np.ndarray:
    """The k most uncertain rows by these float32 scores, ties to the lower row (the API's rule)."""
    key = scores.astype(np.float64) if kind == "entropy" else -scores.astype(np.float64)
    key = np.where(np.isnan(key), -np.inf, key)
    key[excluded] = -np.inf
    order = np.lexsort((np.arange(scores.size), -key))
    return order[:k]


def close(a: np.ndarray, b: np.ndarray, what: str, rtol: float = 1e-4, atol: float = 2e-5) -> float:
    err = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=what)
    return err


def cuda_ms(fn: Callable[[], Any], repeat: int = 3) -> float:
    """Median time of fn on the current stream, by CUDA events (fn may synchronise itself)."""
    times = []
    for _ in range(repeat):
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return float(np.median(times))


def peak_bandwidth() -> Details:
    """Nominal HBM bandwidth by device name, and a measured device-to-device copy."""
    name = torch.cuda.get_device_name(0)
    nominal = 4.8e12 if "H200" in name else 3.35e12 if "H100" in name else None
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = cuda_ms(lambda: dst.copy_(src), repeat=5)
    return {"device": name, "nominal_Bps": nominal, "copy_Bps": 2 * (1 << 30) / (ms / 1e3)}


def roofline(bytes_moved: float, peak: Details) -> Details:
    out = {"bytes": bytes_moved, "predicted_ms_at_copy_bw": 1e3 * bytes_moved / peak["copy_Bps"]}
    if peak["nominal_Bps"]:
        out["predicted_ms_at_nominal_bw"] = 1e3 * bytes_moved / peak["nominal_Bps"]
    return out


# --- correctness at scale ---------------------------------------------------------------------

def check_uncertainty_fp16_logits_at_scale() -> Details:
    n, c, k = 1_000_003, 37, 50_000
    g = (torch.randn(n, c, device="cuda") * 3).half()
    host = g.cpu()
    exclude = np.arange(0, n, 5)
    mask = np.zeros(n, bool)
    mask[exclude] = True
    errors = {}
    for kind in ("entropy", "margin"):
        s_gpu = af.scores(g, kind, from_logits=True).cpu().numpy()
        errors[kind] = close(s_gpu, af.scores(host, kind, from_logits=True).numpy(), kind)
        idx = af.select_uncertain(g, k, kind, from_logits=True, exclude=exclude).cpu().numpy()
        np.testing.assert_array_equal(idx, own_order(s_gpu, k, kind, mask), err_msg=f"{kind}: order of own scores")
        cpu_idx = af.select_uncertain(host, k, kind, from_logits=True, exclude=exclude).numpy()
        overlap = len(set(idx.tolist()) & set(cpu_idx.tolist())) / k
        assert overlap > 0.999, f"{kind}: GPU and CPU picks overlap only {overlap:.4f}"
    return {"message": f"max |GPU - CPU| {errors}", "max_abs_error": errors}


def check_host_float32_through_staging_chunks() -> Details:
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((3_000_001, 23), dtype=np.float32) * 2)  # 276 MB: 9 staging chunks of 32 MB
    s_gpu = af.scores(x, "entropy", from_logits=True, device="cuda")
    err = close(s_gpu, af.scores(x, "entropy", from_logits=True), "entropy")
    idx = af.select_uncertain(x, 10_000, "entropy", from_logits=True, device="cuda")
    np.testing.assert_array_equal(idx, own_order(s_gpu, 10_000, "entropy", np.zeros(x.shape[0], bool)))
    return {"message": f"max |GPU - CPU| {err:.2e}"}


def check_strided_and_transposed_tensors() -> Details:
    g = (torch.randn(200_000, 136, device="cuda") * 3).half()  # 272-byte rows: 16-byte vector loads
    wide = torch.zeros(200_000, 171, dtype=torch.float16, device="cuda")
    wide[:, 3:139] = g
    layouts = {"strided": wide[:, 3:139], "transposed": g.t().contiguous().t()}  # element by element
    for kind in KINDS:
        base = af.scores(g, kind, from_logits=True)
        picks = af.select_uncertain(g, 500, kind, from_logits=True)
        for name, other in layouts.items():
            assert torch.equal(af.scores(other, kind, from_logits=True), base), f"{kind} scores, {name}"
            assert torch.equal(af.select_uncertain(other, 500, kind, from_logits=True), picks), f"{kind} picks, {name}"
    f = torch.randn(200_000, 64, device="cuda")
    ft = f.t().contiguous().t()
    p = torch.softmax(torch.randn(200_000, 10, device="cuda"), 1)
    assert torch.equal(af.kcenter_greedy(f, 100), af.kcenter_greedy(ft, 100)), "k-center, transposed"
    assert torch.equal(af.kmeans_pp(f, 100, seed=3), af.kmeans_pp(ft, 100, seed=3)), "k-means++, transposed"
    assert torch.equal(af.badge(p, f, 50), af.badge(p.t().contiguous().t(), ft, 50)), "BADGE, transposed"
    return {"message": "strided and transposed CUDA tensors give bit-identical results"}


def check_exact_parity_with_the_cpu() -> Details:
    rng = np.random.default_rng(2)
    x = rng.integers(-8, 9, (300_000, 16)).astype(np.float32)  # 293 blocks, 10 groups: every D² level
    g = torch.from_numpy(x).cuda()
    labeled = rng.choice(x.shape[0], 2000, replace=False)
    exclude = rng.choice(x.shape[0], 30_000, replace=False)

    def same(gpu: torch.Tensor, cpu: np.ndarray, what: str) -> None:
        np.testing.assert_array_equal(gpu.cpu().numpy(), cpu, err_msg=what)

    same(af.kcenter_greedy(g, 300), af.kcenter_greedy(x, 300), "k-center")
    same(af.kcenter_greedy(g, 300, labeled=labeled), af.kcenter_greedy(x, 300, labeled=labeled), "k-center, labelled")
    for seed in range(3):
        same(af.kmeans_pp(g, 300, seed=seed, exclude=exclude), af.kmeans_pp(x, 300, seed=seed, exclude=exclude),
             f"k-means++ seed {seed}")
    p = (rng.multinomial(8, np.full(6, 1 / 6), x.shape[0]) / 8).astype(np.float32)  # multiples of 1/8
    same(af.badge(torch.from_numpy(p).cuda(), g.half(), 200, seed=5, exclude=exclude),
         af.badge(p, x.astype(np.float16), 200, seed=5, exclude=exclude), "BADGE")
    return {"message": "k-center (with and without labelled rows), k-means++ over 293 blocks, BADGE: identical"}


def check_edge_cases() -> Details:
    nan = torch.full((1, 8), float("nan"), device="cuda")
    for fn in (af.kcenter_greedy, af.kmeans_pp):
        try:
            fn(nan, 1)
        except ValueError as exc:
            assert "row 0" in str(exc), str(exc)
        else:
            raise AssertionError(f"{fn.__name__}: a single NaN row with k=1 was accepted")
    rng = np.random.default_rng(3)
    for c, kinds in ((1, ("entropy", "least_confidence")), (2, KINDS)):
        p = rng.dirichlet(np.ones(c), 10_000).astype(np.float32)
        z = rng.standard_normal((10_000, c)).astype(np.float32)
        for kind in kinds:
            close(af.scores(torch.from_numpy(p).cuda(), kind).cpu().numpy(), af.scores(p, kind), f"C={c} {kind}")
            close(af.scores(torch.from_numpy(z).cuda(), kind, from_logits=True).cpu().numpy(),
                  af.scores(z, kind, from_logits=True), f"C={c} {kind} logits")
    n = 5000
    exclude = rng.choice(n, 1700, replace=False)
    p = torch.from_numpy(rng.dirichlet(np.ones(4), n).astype(np.float32)).cuda()
    rest = sorted(set(range(n)) - set(exclude.tolist()))
    assert sorted(af.select_uncertain(p, n - 1700, exclude=exclude).tolist()) == rest
    f = torch.from_numpy(rng.standard_normal((n, 5)).astype(np.float32)).cuda()
    assert sorted(af.kmeans_pp(f, n - 1700, exclude=exclude).tolist()) == rest
    assert sorted(af.kcenter_greedy(f, n - 1700, labeled=exclude).tolist()) == rest
    same = torch.ones((2_000_000, 8), dtype=torch.float16, device="cuda")
    host = same.cpu().numpy()
    for fn in (af.kcenter_greedy, af.kmeans_pp):
        np.testing.assert_array_equal(fn(same, 20).cpu().numpy(), fn(host, 20),
                                      err_msg=f"{fn.__name__}, identical rows")
    ties = torch.full((2_000_000, 4), 0.25, device="cuda")
    assert af.select_uncertain(ties, 100).cpu().tolist() == list(range(100))
    return {"message": "NaN with k=1, C=1 and 2, k = N - excluded, 2M identical rows"}


def check_stream_ordering() -> Details:
    side = torch.cuda.Stream()
    a = torch.randn(8192, 8192, device="cuda") / 90
    with torch.cuda.stream(side):
        y = a
        for _ in range(40):  # ~44 TFLOP of GEMMs still queued when the kernels are issued
            y = torch.tanh(y @ a)
        logits = y[:, :1000].contiguous()
        got = af.scores(logits, "entropy", from_logits=True)
        picks = af.kcenter_greedy(y[:, :256].contiguous(), 20)
        drawn = af.kmeans_pp(y[:, :256].contiguous(), 20, seed=1)
    torch.cuda.synchronize()
    assert torch.equal(got, af.scores(logits, "entropy", from_logits=True)), "scores"
    assert torch.equal(picks, af.kcenter_greedy(y[:, :256].contiguous(), 20)), "k-center"
    assert torch.equal(drawn, af.kmeans_pp(y[:, :256].contiguous(), 20, seed=1)), "k-means++"
    return {"message": "results issued behind a GEMM chain on a side stream equal the synchronised ones"}


def check_exception_in_a_progress_callback() -> Details:
    def boom(done: int, total: int) -> None:
        raise RuntimeError("stop here")

    def workspace(nbytes: int) -> Any:  # what the API passes for torch input: PyTorch's allocator
        return torch.utils.dlpack.to_dlpack(torch.empty(nbytes, dtype=torch.uint8, device="cuda"))

    x = torch.randn(100_000, 32, device="cuda")
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    for attempt in range(3):
        try:
            _C.diversity(0, torch.utils.dlpack.to_dlpack(x), None, False, True, None, None, None,
                         np.empty(100, np.int64), None, 100, 0, 0, True, True, torch.cuda.current_stream().cuda_stream,
                         boom, workspace=workspace)
        except RuntimeError as exc:
            assert "stop here" in str(exc)
        else:
            raise AssertionError("the callback's exception was swallowed (diversity)")
        try:
            _C.uncertainty(np.random.default_rng(attempt).standard_normal((400_000, 30)).astype(np.float32), 0, True,
                           True, None, np.empty(400_000, np.float32), None, 0, 0, False, 1 << 20, True, 0, boom)
        except RuntimeError as exc:
            assert "stop here" in str(exc)
        else:
            raise AssertionError("the callback's exception was swallowed (uncertainty, host chunks)")
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == before
    assert af.kcenter_greedy(x, 5).shape == (5,)
    return {"message": "exceptions propagate; the device stays usable; no memory kept"}


def check_memory_is_stable_over_repeated_calls() -> Details:
    rng = np.random.default_rng(4)
    f = torch.randn(300_000, 64, device="cuda")
    p = torch.softmax(torch.randn(300_000, 20, device="cuda"), 1)
    host = rng.standard_normal((300_000, 20)).astype(np.float32)

    def round_trip() -> None:
        af.kcenter_greedy(f, 50)
        af.kmeans_pp(f, 50)
        af.badge(p, f, 20)
        af.select_uncertain(p, 1000)
        af.select_uncertain(host, 1000, from_logits=True, device="cuda")
        af.kmeans_pp(host, 20, device="cuda")

    round_trip()
    torch.cuda.synchronize()
    allocated, free = torch.cuda.memory_allocated(), torch.cuda.mem_get_info()[0]
    for _ in range(15):
        round_trip()
    torch.cuda.synchronize()
    drift = free - torch.cuda.mem_get_info()[0]
    assert torch.cuda.memory_allocated() == allocated, "PyTorch-accounted memory grew"
    assert drift < 64 << 20, f"device free memory fell by {drift / 2**20:.0f} MB over 15 rounds"
    return {"message": f"free memory drift {drift / 2**20:.1f} MB", "drift_bytes": drift}


# --- timings ----------------------------------------------------------------------------------

_PEAK: Details = {}


def check_timing_uncertainty() -> Details:
    _PEAK.update(peak_bandwidth())
    out: Details = {"peak": dict(_PEAK)}
    n, c = 1_000_000, 1000
    p = torch.softmax(torch.randn(n, c, device="cuda"), 1).half()
    for kind in KINDS:
        ms = cuda_ms(lambda: af.scores(p, kind))
        moved = n * c * 2 + n * 4
        out[f"{kind} 1M x 1000 fp16 probabilities"] = {"ms": ms, "GBps": moved / ms / 1e6, **roofline(moved, _PEAK)}
    ms = cuda_ms(lambda: af.select_uncertain(p, 1000, "entropy"))
    out["select 1000 by entropy, 1M x 1000 fp16"] = {"ms": ms, **roofline(n * c * 2 + n * 4 * 6, _PEAK)}
    p = None  # free 2 GB before the next case
    z = (torch.randn(1_000_003, 37, device="cuda") * 3).half()
    ms = cuda_ms(lambda: af.scores(z, "entropy", from_logits=True))
    moved = z.numel() * 2 + z.shape[0] * 4
    out["entropy 1M x 37 fp16 logits"] = {"ms": ms, "GBps": moved / ms / 1e6, **roofline(moved, _PEAK)}
    best = max(v["GBps"] for k, v in out.items() if isinstance(v, dict) and "GBps" in v)
    return {"message": f"best {best:.0f} GB/s (copy {_PEAK['copy_Bps'] / 1e9:.0f} GB/s)", **out}


def per_pick_ms(run: Callable[[int], Any], k1: int = 8, k2: int = 40) -> float:
    """(time for k2 picks - time for k1 picks) / (k2 - k1): the set-up cost cancels."""
    return (cuda_ms(lambda: run(k2), repeat=2) - cuda_ms(lambda: run(k1), repeat=2)) / (k2 - k1)


def features_1280k_2048(clustered: bool) -> torch.Tensor:
    n, d = 1_280_000, 2048
    if not clustered:
        return torch.randn(n, d, device="cuda", dtype=torch.float16)
    centres = torch.randn(2000, d, device="cuda") * 4
    x = centres[torch.randint(0, 2000, (n,), device="cuda")]
    x += torch.randn_like(x) * 0.5
    return x.half()


def check_timing_kcenter() -> Details:
    if not _PEAK:
        _PEAK.update(peak_bandwidth())
    out: Details = {"peak": dict(_PEAK)}
    n, d = 1_280_000, 2048
    for clustered in (False, True):
        x = features_1280k_2048(clustered)
        for prune in (False, True):
            ms = per_pick_ms(lambda k: diversity_select("kcenter", x, k, prune=prune))
            skipped = diversity_select("kcenter", x, 40, prune=prune).skipped_fraction
            moved = n * 16 + (1 - skipped) * n * d * 2  # r + assigned read (and at most written), rows computed
            out[f"{'clustered' if clustered else 'gaussian'} prune={prune}"] = {
                "ms_per_pick": ms, "skipped_fraction": skipped, **roofline(moved, _PEAK)}
        x = None  # free 5 GB before the next data set
    return {"message": "; ".join(f"{k}: {v['ms_per_pick']:.2f} ms" for k, v in out.items() if k != "peak"), **out}


def check_timing_kmeans_pp() -> Details:
    if not _PEAK:
        _PEAK.update(peak_bandwidth())
    out: Details = {"peak": dict(_PEAK)}
    x = features_1280k_2048(True)
    ms = per_pick_ms(lambda k: af.kmeans_pp(x, k))
    skipped = diversity_select("kmeans_pp", x, 40).skipped_fraction
    out["clustered 1.28M x 2048 fp16"] = {"ms_per_pick": ms, "skipped_fraction": skipped,
                                          **roofline(1_280_000 * (8 + (1 - skipped) * 4096), _PEAK)}
    x = None  # free 5 GB before the next data set
    small = torch.randn(4_000_000, 32, device="cuda", dtype=torch.float16)
    ms = per_pick_ms(lambda k: af.kmeans_pp(small, k, seed=1))
    out["gaussian 4M x 32 fp16 (choose-bound)"] = {"ms_per_pick": ms, **roofline(4_000_000 * (8 + 64), _PEAK)}
    return {"message": "; ".join(f"{k}: {v['ms_per_pick']:.3f} ms" for k, v in out.items() if k != "peak"), **out}


CASES: List[Callable[[], Details]] = [
    check_uncertainty_fp16_logits_at_scale,
    check_host_float32_through_staging_chunks,
    check_strided_and_transposed_tensors,
    check_exact_parity_with_the_cpu,
    check_edge_cases,
    check_stream_ordering,
    check_exception_in_a_progress_callback,
    check_memory_is_stable_over_repeated_calls,
    check_timing_uncertainty,
    check_timing_kcenter,
    check_timing_kmeans_pp,
]
