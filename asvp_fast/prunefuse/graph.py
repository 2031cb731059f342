"""Which tensor dimensions share a channel index: the dependency graph of structured pruning.

:func:`channel_groups` traces a network with :mod:`torch.fx` and runs it once on an example input
(shapes), then follows every channel dimension through the graph. A *channel group* is a set of
``(state key, dim)`` pairs that index the same channels and must be pruned together: a
convolution's output channels (``weight`` dim 0, ``bias``), the BatchNorm that normalises them
(``weight``, ``bias``, ``running_mean``, ``running_var``), the next convolution's input channels
(``weight`` dim 1), and — through a residual addition — every other tensor added to them.

Supported layers: ``Conv1d/Conv2d`` (dense or depthwise), ``Linear``, ``BatchNorm1d/2d``,
``LayerNorm`` over the channel dimension, parameter-free activations, dropout, pooling, and the
element-wise arithmetic, spatial means and flattening that pass channels through. A group that
reaches the network's input or output, or an operation not understood, is *fixed* (never pruned):
that is always safe. A layer with weights that is not supported raises :class:`PruneError`.
"""

from __future__ import annotations

import functools
import operator
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp


class PruneError(ValueError):
    """The network cannot be pruned or fused as asked (unsupported layer, mismatched networks...)."""


# Parameter-free modules and functions that pass every channel through unchanged.
PASS_MODULES = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.LeakyReLU,
                nn.ELU, nn.Mish, nn.Identity, nn.Dropout, nn.Dropout2d, nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d,
                nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
F = torch.nn.functional
ELEMENTWISE_FUNCTIONS = {operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, operator.imul,
                         torch.add, torch.sub, torch.mul, torch.div, torch.relu, torch.sigmoid, torch.tanh, F.relu,
                         F.relu6, F.gelu, F.silu, F.sigmoid, F.hardswish, F.hardsigmoid, F.leaky_relu, F.dropout,
                         F.adaptive_avg_pool2d, F.adaptive_avg_pool1d, F.avg_pool2d, F.max_pool2d, F.avg_pool1d}
ELEMENTWISE_METHODS = {"add", "sub", "mul", "div", "relu", "sigmoid", "tanh", "float", "double", "contiguous", "to",
                       "clone", "add_", "mul_", "relu_", "type_as"}
REDUCTIONS = {"mean", "sum", "amax"}


@dataclass
class ChannelGroup:
    """Tensor dimensions indexing the same channels (see the module docstring).

    ``members``: ``(state key, dim)`` pairs; ``producers``: state keys of the weights whose rows
    (dim 0) make these channels (their L2 norms rank the channels); ``size``: the channel count;
    ``fixed``: why the group must not be pruned (``""``: it may be).
    """

    members: List[Tuple[str, int]] = field(default_factory=list)
    producers: List[str] = field(default_factory=list)
    size: int = 0
    fixed: str = ""


class _Spaces:
    """Union-find over channel spaces; each root collects members, producers and fixed reasons."""

    def __init__(self) -> None:
        self.parent: List[int] = []
        self.size: List[Optional[int]] = []
        self.members: List[List[Tuple[str, int]]] = []
        self.producers: List[List[str]] = []
        self.fixed: List[str] = []
        self.owner: Dict[Tuple[str, int], int] = {}

    def new(self, size: Optional[int], fixed: str = "") -> int:
        self.parent.append(len(self.parent))
        self.size.append(size)
        self.members.append([])
        self.producers.append([])
        self.fixed.append(fixed)
        return len(self.parent) - 1

    def find(self, a: int) -> int:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: int, b: int, where: str) -> int:
        a, b = self.find(a), self.find(b)
        if a == b:
            return a
        if self.size[a] is not None and self.size[b] is not None and self.size[a] != self.size[b]:
            raise PruneError(f"{where}: joins {self.size[a]} channels with {self.size[b]}; the graph is not understood")
        self.parent[b] = a
        self.size[a] = self.size[a] if self.size[a] is not None else self.size[b]
        self.members[a] += self.members[b]
        self.producers[a] += self.producers[b]
        self.fixed[a] = self.fixed[a] or self.fixed[b]
        return a

    def add(self, space: int, key: str, dim: int, *, producer: bool = False) -> None:
        root = self.find(space)
        if (key, dim) in self.owner:  # a layer called twice (shared weights): both uses are one group
            root = self.union(self.owner[(key, dim)], root, f"the shared tensor {key}")
        else:
            self.owner[(key, dim)] = root
            self.members[root].append((key, dim))
        if producer and key not in self.producers[root]:
            self.producers[root].append(key)

    def fix(self, space: int, why: str) -> None:
        root = self.find(space)
        self.fixed[root] = self.fixed[root] or why


LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm)


# module class -> a forward with the same layers and shapes that torch.fx can trace (for modules
# whose own forward checks its input in Python); see register_traceable_forward
TRACEABLE_FORWARDS: Dict[type, Callable[..., Any]] = {}


def register_traceable_forward(cls: type, forward: Callable[..., Any]) -> None:
    """Trace ``forward(module, *args)`` instead of ``cls.forward`` when pruning finds such a module.

    Pruning only reads the graph and its shapes, so ``forward`` must call the same layers in the same
    order on the same shapes; its numbers may differ (e.g. no input validation, a plain resize)."""
    if not isinstance(cls, type) or not issubclass(cls, nn.Module) or not callable(forward):
        raise TypeError("register_traceable_forward needs an nn.Module subclass and a callable")
    TRACEABLE_FORWARDS[cls] = forward


class _Tracer(fx.Tracer):
    """Keeps every supported layer whole, subclasses too (e.g. a convolution that pads itself), and
    traces registered stand-in forwards."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, LAYERS + PASS_MODULES) or super().is_leaf_module(m, qualname)

    def call_module(self, m: nn.Module, forward: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        stand_in = next((f for cls, f in TRACEABLE_FORWARDS.items() if isinstance(m, cls)), None)
        if stand_in is not None:
            forward = functools.partial(stand_in, m)
        return super().call_module(m, forward, args, kwargs)


def _trace(model: nn.Module, example_input: Any) -> fx.GraphModule:
    """The eval-mode graph of ``model`` (no stochastic-depth branches), shapes from ``example_input``."""
    modes = {m: m.training for m in model.modules()}
    model.eval()  # BatchNorm statistics must not move; training-only branches are left out
    try:
        try:
            gm = fx.GraphModule(model, _Tracer().trace(model))
        except Exception as exc:
            raise PruneError(f"cannot trace {type(model).__name__} with torch.fx ({type(exc).__name__}: {exc}); "
                             "structured pruning needs a forward without data-dependent control flow") from None
        try:
            with torch.no_grad():
                ShapeProp(gm).propagate(example_input)
        except Exception as exc:
            raise PruneError(f"the example input does not run through {type(model).__name__} "
                             f"({type(exc).__name__}: {exc})") from None
    finally:
        for m, mode in modes.items():
            m.train(mode)
    return gm


def _shape(node: Any) -> Optional[Tuple[int, ...]]:
    meta = getattr(node, "meta", {}).get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def channel_groups(model: nn.Module, example_input: Any) -> List[ChannelGroup]:
    """The channel groups of ``model`` (see the module docstring), found on ``example_input``."""
    gm = _trace(model, example_input)
    spaces = _Spaces()
    where: Dict[fx.Node, int] = {}  # node -> channel space of its output (dim 1, or the last dim of 2-D)

    def space_of(arg: Any) -> Optional[int]:
        return where.get(arg) if isinstance(arg, fx.Node) else None

    def fix_inputs(node: fx.Node, why: str) -> None:
        for arg in node.all_input_nodes:
            if arg in where:
                spaces.fix(where[arg], why)

    for node in gm.graph.nodes:
        shape = _shape(node)
        channels = shape[1] if shape is not None and len(shape) >= 2 else None
        if node.op == "placeholder":
            where[node] = spaces.new(channels, "the network's input")
        elif node.op == "get_attr":
            raise PruneError(f"the tensor {node.target!r} is used outside a supported layer; structured pruning "
                             "cannot follow it")
        elif node.op == "call_module":
            module = gm.get_submodule(str(node.target))
            _module_rule(spaces, where, node, str(node.target), module, space_of(node.args[0]), channels)
        elif node.op in ("call_function", "call_method"):
            _function_rule(spaces, where, node, space_of, fix_inputs, shape)
        elif node.op == "output":
            fix_inputs(node, "the network's output")
    groups: Dict[int, ChannelGroup] = {}
    for i in range(len(spaces.parent)):
        root = spaces.find(i)
        if root in groups or not spaces.members[root]:
            continue
        groups[root] = ChannelGroup(list(spaces.members[root]), list(spaces.producers[root]),
                                    int(spaces.size[root] or 0), spaces.fixed[root])
    return list(groups.values())


def _module_rule(spaces: _Spaces, where: Dict[fx.Node, int], node: fx.Node, name: str, module: nn.Module,
                 inp: Optional[int], channels: Optional[int]) -> None:
    if inp is None:
        inp = spaces.new(None, f"the input of {name} is not followed")
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        if module.groups == 1:
            spaces.add(inp, f"{name}.weight", 1)
            out = spaces.new(module.out_channels)
        elif module.groups == module.in_channels == module.out_channels:  # depthwise: channels pass through
            out = inp
        else:
            raise PruneError(f"unsupported layer {name} ({type(module).__name__} with groups={module.groups}): only "
                             "dense and depthwise convolutions can be pruned")
        spaces.add(out, f"{name}.weight", 0, producer=True)
        if module.bias is not None:
            spaces.add(out, f"{name}.bias", 0)
        where[node] = out
    elif isinstance(module, nn.Linear):
        spaces.add(inp, f"{name}.weight", 1)
        out = spaces.new(module.out_features)
        spaces.add(out, f"{name}.weight", 0, producer=True)
        if module.bias is not None:
            spaces.add(out, f"{name}.bias", 0)
        where[node] = out
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        for key in ("weight", "bias", "running_mean", "running_var"):
            if getattr(module, key, None) is not None:
                spaces.add(inp, f"{name}.{key}", 0)
        where[node] = inp
    elif isinstance(module, nn.LayerNorm):
        shape = _shape(node.args[0])
        if len(module.normalized_shape) != 1 or shape is None or len(shape) != 2:
            raise PruneError(f"unsupported layer {name} (LayerNorm over {tuple(module.normalized_shape)} of a "
                             f"{shape} input): only LayerNorm over the features of (B, D) inputs can be pruned")
        for key in ("weight", "bias"):
            if getattr(module, key, None) is not None:
                spaces.add(inp, f"{name}.{key}", 0)
        where[node] = inp
    elif isinstance(module, PASS_MODULES):
        where[node] = inp
    elif isinstance(module, nn.Flatten):
        where[node] = _flatten(spaces, node, inp, channels)
    elif any(True for _ in module.parameters()) or any(True for _ in module.buffers()):
        raise PruneError(f"unsupported layer {name} ({type(module).__name__}): structured pruning knows Conv1d/2d, "
                         "Linear, BatchNorm and LayerNorm among layers with weights")
    else:  # a parameter-free module we do not know: its channels stay as they are
        spaces.fix(inp, f"{name} ({type(module).__name__}) is not understood")
        where[node] = spaces.new(channels, f"the output of {name} is not followed")


def _flatten(spaces: _Spaces, node: fx.Node, inp: int, channels: Optional[int]) -> int:
    before = _shape(node.args[0])
    if before is not None and len(before) >= 2 and channels == before[1]:  # (B, C, 1, 1) -> (B, C)
        return inp
    spaces.fix(inp, "flattened with its spatial positions")
    return spaces.new(channels, "a flattened tensor")


def _function_rule(spaces: _Spaces, where: Dict[fx.Node, int], node: fx.Node, space_of: Any, fix_inputs: Any,
                   shape: Optional[Tuple[int, ...]]) -> None:
    target = node.target
    channels = shape[1] if shape is not None and len(shape) >= 2 else None
    if shape is None:  # sizes, dtypes, attributes: no tensor flows on
        return
    tensor_args = [a for a in node.all_input_nodes if a in where]
    elementwise = target in ELEMENTWISE_FUNCTIONS or (node.op == "call_method" and target in ELEMENTWISE_METHODS)
    if elementwise and tensor_args:
        out = None
        for arg in tensor_args:
            arg_shape = _shape(arg)
            arg_channels = arg_shape[1] if arg_shape is not None and len(arg_shape) >= 2 else None
            if arg_channels is not None and arg_channels == channels:
                out = where[arg] if out is None else spaces.union(out, where[arg], f"{node.name} ({target})")
            elif arg_channels not in (None, 1):
                spaces.fix(where[arg], f"{node.name} broadcasts it")
        where[node] = out if out is not None else spaces.new(channels, f"{node.name} is not followed")
        return
    first = space_of(node.args[0]) if node.args else None
    if first is not None and (target in (torch.flatten,) or (node.op == "call_method" and target == "flatten")):
        where[node] = _flatten(spaces, node, first, channels)
        return
    if first is not None and (target in (torch.mean, torch.sum, torch.amax) or
                              (node.op == "call_method" and target in REDUCTIONS)):
        dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
        before = _shape(node.args[0])
        dims_t = (dims,) if isinstance(dims, int) else tuple(dims) if isinstance(dims, (tuple, list)) else None
        if before is not None and len(before) >= 3 and dims_t is not None and \
                all(isinstance(d, int) and d % len(before) >= 2 for d in dims_t):
            where[node] = first  # a spatial mean: channels pass through
            return
    fix_inputs(node, f"{node.name} ({getattr(target, '__name__', target)}) is not understood")
    where[node] = spaces.new(channels, f"the output of {node.name} is not followed")
