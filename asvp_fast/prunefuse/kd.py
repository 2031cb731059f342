"""Knowledge distillation from the trained selector's logits (Hinton et al. 2015)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core.checks import parse_real

KD_WEIGHT = 0.5  # defaults of PruneFuse's KD term in asvp_fast (the paper gives no values)
KD_TEMPERATURE = 4.0


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, *,
            weight: float = KD_WEIGHT, temperature: float = KD_TEMPERATURE) -> torch.Tensor:
    """``(1 - weight) · CE(student, labels) + weight · T² · KL(softmax(teacher/T) ‖ softmax(student/T))``.

    The KL term is averaged over the batch; the ``T²`` factor keeps its gradients on the scale of
    the cross-entropy's. ``weight = 0`` is plain cross-entropy; the teacher gets no gradient.
    """
    weight = parse_real(weight, "weight", minimum=0.0, maximum=1.0)
    temperature = parse_real(temperature, "temperature", positive=True)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ in shape")
    ce = F.cross_entropy(student_logits, labels)
    if weight == 0:
        return ce
    t = temperature
    kl = F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits.detach() / t, dim=1),
                  reduction="batchmean", log_target=True)
    return (1.0 - weight) * ce + weight * t * t * kl
