"""Attention heads and feed-forward units of BERT-style encoders (MiniLM): what PruneFuse prunes in a
pre-trained transformer.

The residual stream (embeddings, hidden size, LayerNorms) is shared by every layer and stays whole;
inside each layer two kinds of units are pruned independently:

* **heads** of the self-attention: a head owns ``attention_head_size`` consecutive rows of the
  query, key and value projections (weights and biases) and the same columns of the attention
  output projection; its score is the squared L2 norm of its query, key and value rows;
* **feed-forward units**: a unit owns one row of the intermediate projection (weight and bias) and
  one column of the output projection; its score is the squared L2 norm of its intermediate row.

Each layer keeps ``round((1 - ratio) * count)`` of each (at least one), the largest scores, ties to
the lower index. The encoder is found by its modules' shape (Hugging Face's ``BertSelfAttention``
layout: ``query``/``key``/``value`` linears with ``num_attention_heads`` and ``attention_head_size``,
beside ``intermediate.dense`` and ``output.dense``), so any BERT-family model (MiniLM, BERT, a
user's checkpoint of the same architecture) is handled; no graph trace is needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Tuple

import torch
from torch import nn

__all__ = ["TransformerUnits", "transformer_units", "update_attention_sizes"]


@dataclass
class TransformerUnits:
    """One prunable family of one layer: ``count`` units of ``width`` consecutive indices each;
    ``producers``: the state keys whose rows score a unit; ``members``: (state key, dim) that the
    kept indices select."""

    count: int
    width: int
    producers: List[str]
    members: List[Tuple[str, int]]

    def scores(self, state: Dict[str, torch.Tensor]) -> torch.Tensor:
        total = torch.zeros(self.count, dtype=torch.float64)
        for key in self.producers:
            rows = state[key].detach().to(torch.float64).reshape(self.count, -1)
            total += rows.pow(2).sum(1)
        return total

    def indices(self, kept_units: List[int]) -> List[int]:
        return [u * self.width + j for u in kept_units for j in range(self.width)]


def _is_self_attention(module: nn.Module) -> bool:
    return all(isinstance(getattr(module, name, None), nn.Linear) for name in ("query", "key", "value")) and \
        isinstance(getattr(module, "num_attention_heads", None), int) and \
        isinstance(getattr(module, "attention_head_size", None), int)


def transformer_units(model: nn.Module) -> List[TransformerUnits]:
    """The heads and feed-forward units of every BERT-style layer in ``model`` ([] for other networks)."""
    names = dict(model.named_modules())
    out: List[TransformerUnits] = []
    for name, module in names.items():
        if not _is_self_attention(module):
            continue
        attention = name.rpartition(".")[0]  # ...attention (holds .self and .output)
        layer = attention.rpartition(".")[0]
        heads, size = module.num_attention_heads, module.attention_head_size
        projection = f"{attention}.output.dense"
        if not isinstance(names.get(projection), nn.Linear):
            continue
        qkv = [f"{name}.{p}" for p in ("query", "key", "value")]
        out.append(TransformerUnits(
            count=heads, width=size, producers=[f"{k}.weight" for k in qkv],
            members=[(f"{k}.{t}", 0) for k in qkv for t in ("weight", "bias")] + [(f"{projection}.weight", 1)]))
        intermediate, output = f"{layer}.intermediate.dense", f"{layer}.output.dense"
        if isinstance(names.get(intermediate), nn.Linear) and isinstance(names.get(output), nn.Linear):
            units = names[intermediate].out_features
            out.append(TransformerUnits(
                count=units, width=1, producers=[f"{intermediate}.weight"],
                members=[(f"{intermediate}.weight", 0), (f"{intermediate}.bias", 0), (f"{output}.weight", 1)]))
    return out


def update_attention_sizes(model: nn.Module) -> None:
    """After slicing: every self-attention's head count and width agree with its projections."""
    for module in model.modules():
        if _is_self_attention(module):
            module.all_head_size = module.query.out_features
            module.num_attention_heads = module.all_head_size // module.attention_head_size
