from typing import Any, Dict

def build_info() -> Dict[str, Any]: ...
def set_isa(name: str) -> None: ...
def read_sum(a: Any, threads: int = 0) -> float: ...
def uncertainty(
    x: Any,
    kind: int,
    from_logits: bool,
    validate: bool,
    exclude: Any,
    scores_out: Any,
    indices_out: Any,
    k: int,
    threads: int,
    release_pages: bool,
    chunk_bytes: int,
    use_cuda: bool,
    stream: int,
    progress: Any = None,
    workspace: Any = None,
    cuda_device: int = -1,
) -> None: ...
def radix_select_scores(statistic: Any, kind: int, exclude: Any, k: int) -> Any: ...
def warp_emulated_scores(x: Any, kind: int, from_logits: bool, lanes: int = 0, width: int = 4) -> Any: ...
def render_update(r: Any, assigned: Any, gaps: Any, distance: Any, slot: int, slack: float, prune: bool,
                  validate: bool) -> Dict[str, Any]: ...
def render_choose_d2(r: Any, u: float) -> int: ...
def d2_draw_definition(r: Any, u: float) -> int: ...
def uniform01(seed: int, counter: int) -> float: ...
def scale_to_count(u: float, n: int) -> int: ...
def diversity(
    method: int,
    features: Any,
    x: Any,
    from_logits: bool,
    validate: bool,
    labeled: Any,
    labeled_nearest: Any,
    exclude: Any,
    picks_out: Any,
    distances_out: Any,
    k: int,
    seed: int,
    threads: int,
    prune: bool,
    use_cuda: bool,
    stream: int,
    progress: Any = None,
    workspace: Any = None,
    cuda_device: int = -1,
) -> Dict[str, Any]: ...
def shard_fold_in(
    x: Any,
    centre: Any,
    r: Any,
    probs: Any = None,
    y: Any = None,
    qn: Any = None,
    hn: Any = None,
    threads: int = 0,
    stream: int = 0,
) -> None: ...
def shard_badge_norms(probs: Any, features: Any, y: Any, qn: Any, hn: Any, stream: int = 0) -> None: ...
def shard_fold_cuda_rendering(x: Any, centre: Any, r: Any, probs: Any = None, y: Any = None, qn: Any = None,
                              hn: Any = None, width: int = 4) -> Any: ...
def shard_badge_norms_rendering(probs: Any, features: Any) -> Any: ...
