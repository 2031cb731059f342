"""PruneFuse (Kousar et al., arXiv 2501.01118): a structurally pruned copy of the target network
selects the data, and its trained weights are fused back into the dense network.

* :func:`prune` ``(model, ratio, example_input) -> (pruned_model, index_map)``: structured channel
  pruning by the L2 norm of each channel's weights; channels tied by residual connections (or any
  element-wise join) are pruned together (:mod:`.graph`);
* :func:`fuse` ``(dense_model, pruned_model, index_map)``: copies the pruned tensors into the dense
  positions they were kept from (in place, returned); ``ratio = 0`` makes both the identity;
* :class:`IndexMap`: the kept indices per tensor, JSON save/load;
* :func:`count_params`, :func:`count_flops`: size and multiply-accumulates per item;
* :func:`kd_loss`: cross-entropy plus distillation from the selector's logits.

Needs PyTorch. The active-learning method is ``prunefuse`` in run configs
(:mod:`asvp_fast.loop.methods.prunefuse`).
"""

from .counts import count_flops, count_params
from .graph import ChannelGroup, PruneError, channel_groups, register_traceable_forward
from .kd import KD_TEMPERATURE, KD_WEIGHT, kd_loss
from .prune import IndexMap, apply_index_map, check_ratio, fuse, kept_count, prune

__all__ = ["ChannelGroup", "IndexMap", "KD_TEMPERATURE", "KD_WEIGHT", "PruneError", "apply_index_map", "channel_groups",
           "check_ratio", "count_flops", "count_params", "fuse", "kd_loss", "kept_count", "prune",
           "register_traceable_forward"]
