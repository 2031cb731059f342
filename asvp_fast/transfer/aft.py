"""AFT (adaptive feature transfer) as a loss module for any PyTorch training loop, and KD as
feature regression, its baseline.

AFT (Qiu et al., "Transferring Knowledge from Large Foundation Models to Small Downstream Models";
first titled "Efficient Transfer Learning from Arbitrary Pre-Trained Models") trains a small
downstream model with a prior that pulls its penultimate features φ(x) toward the pre-trained
features ψ(x) of one or several larger models, each pre-trained feature weighted by a learned
ρ = σ(s). Per mini-batch, both φ and ψ·ρ are centred per dimension and L2-normalised per row;
their linear kernels K_φ = ΦΦᵀ and K_ψ = ΨΨᵀ (batch × batch) are compared by their RMSE:

    loss = task loss (e.g. cross-entropy) + β · AFTPrior(φ, ψ)

The kernel form makes the prior blind to any orthogonal rotation of φ, lets φ and ψ have
different widths, and makes weights ρ_a, ρ_b on two copies of a feature act exactly as one weight
√(ρ_a² + ρ_b²) on it. Because rows are normalised after weighting, only the ratios of the ρ
matter; a feature whose ρ falls relative to the others stops pulling on φ.

Usage with your own loop::

    prior = AFTPrior(teacher_dim=psi.shape[1])            # s = 0: ρ = 0.5 everywhere
    opt = torch.optim.Adam([{"params": model.parameters(), "lr": 1e-4},
                            {"params": prior.parameters(), "lr": 1e-2}])
    for x, y, rows in loader:
        phi = model.features(x)                           # the layer the linear head reads
        loss = F.cross_entropy(model.head(phi), y) + beta * prior(phi, psi[rows])

The authors' code keeps s fixed by default (``--learn_scales`` is off) while their README example
turns it on; here ``learn_scales=True`` is the default. :class:`FeatureRegressionKD` is the paper's
KD baseline: a linear map from φ to ψ trained by mean squared error (it tries to predict every
pre-trained feature, useful or not).
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import nn

__all__ = ["AFTPrior", "FeatureRegressionKD", "KERNELS", "centred_unit_rows"]

KERNELS = ("linear", "rbf")
# As in the authors' code: added to the row norms (a zero row stays zero) and inside the square
# root (a finite gradient when the kernels agree exactly).
NORM_EPS = 1e-8
RMSE_EPS = 1e-8


def _check_pair(student: torch.Tensor, teacher: torch.Tensor, teacher_dim: int, what: str) -> None:
    for name, x in (("student_features", student), ("teacher_features", teacher)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{what}: {name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 2:
            raise ValueError(f"{what}: {name} must be 2-D (batch, dim), got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"{what}: {name} must be floating point, got {x.dtype}")
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(f"{what}: student_features has {student.shape[0]} rows but teacher_features has "
                         f"{teacher.shape[0]}: they must be the same examples, in the same order")
    if student.shape[0] < 2:
        raise ValueError(f"{what}: a batch of {student.shape[0]} row(s): the kernels of a batch need at least 2 rows "
                         "(centring one row leaves zeros); use batches of 2 or more")
    if teacher.shape[1] != teacher_dim:
        raise ValueError(f"{what}: teacher_features has {teacher.shape[1]} columns, but the prior was built for "
                         f"teacher_dim = {teacher_dim}")
    finite_s, finite_t = torch.isfinite(student).all(), torch.isfinite(teacher).all()
    if not bool(finite_t):
        raise ValueError(f"{what}: teacher_features contain NaN or infinite values")
    if not bool(finite_s):
        raise ValueError(f"{what}: student_features contain NaN or infinite values (the model diverged?)")


def centred_unit_rows(x: torch.Tensor) -> torch.Tensor:
    """``x`` centred per column over the batch, then each row divided by (its L2 norm + 1e-8)."""
    x = x - x.mean(dim=0, keepdim=True)
    return x / (x.norm(dim=1, keepdim=True) + NORM_EPS)


def _kernel(x: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "linear":
        return x @ x.t()
    # exp(-|x_i - x_j|²) on unit rows: |x_i - x_j|² = |x_i|² + |x_j|² - 2 x_i·x_j
    sq = (x * x).sum(dim=1)
    return torch.exp(-(sq[:, None] + sq[None, :] - 2.0 * (x @ x.t())).clamp_min(0.0))


class AFTPrior(nn.Module):
    """The AFT prior over a downstream model's penultimate features (see the module docstring).

    Parameters
    ----------
    teacher_dim
        Width of the (concatenated) pre-trained features ψ.
    learn_scales
        Learn s (ρ = σ(s), one weight per pre-trained feature, starting at 0.5). Off: ρ stays 0.5
        everywhere, which (rows being normalised) is plain kernel matching, "AFT without ρ".
    kernel
        ``"linear"`` (the paper's) or ``"rbf"`` (exp(-|a - b|²) on the normalised rows).

    ``forward(student_features (B, d_φ), teacher_features (B, teacher_dim))`` returns the scalar
    kernel RMSE; ``d_φ`` is free (the downstream model's width). Batches need B ≥ 2 rows. Give s
    its own learning rate (the authors use 1e-2 while the model uses e.g. Adam 1e-4, β = 10).
    """

    def __init__(self, teacher_dim: int, *, learn_scales: bool = True, kernel: str = "linear") -> None:
        super().__init__()
        if isinstance(teacher_dim, bool) or not isinstance(teacher_dim, int) or teacher_dim < 1:
            raise ValueError(f"teacher_dim must be a positive integer, got {teacher_dim!r}")
        if not isinstance(learn_scales, bool):
            raise TypeError(f"learn_scales must be True or False, got {learn_scales!r}")
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
        self.teacher_dim = int(teacher_dim)
        self.kernel = kernel
        self.learn_scales = learn_scales
        self.s = nn.Parameter(torch.zeros(self.teacher_dim), requires_grad=learn_scales)

    @property
    def rho(self) -> torch.Tensor:
        """The feature weights σ(s), shape (teacher_dim,), detached (for inspection)."""
        return torch.sigmoid(self.s.detach())

    def kernels(self, student_features: torch.Tensor, teacher_features: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The two batch kernels (K_φ, K_ρψ), computed in float32."""
        _check_pair(student_features, teacher_features, self.teacher_dim, "AFTPrior")
        phi = centred_unit_rows(student_features.float())
        psi = centred_unit_rows(teacher_features.float() * torch.sigmoid(self.s))
        return _kernel(phi, self.kernel), _kernel(psi, self.kernel)

    def forward(self, student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
        k_phi, k_psi = self.kernels(student_features, teacher_features)
        return torch.sqrt(((k_phi - k_psi) ** 2).mean() + RMSE_EPS)

    def extra_repr(self) -> str:
        return f"teacher_dim={self.teacher_dim}, learn_scales={self.learn_scales}, kernel={self.kernel!r}"


class FeatureRegressionKD(nn.Module):
    """KD as feature regression: a linear map W from the student's features φ (d_φ) to the
    pre-trained features ψ (teacher_dim), loss = mean((Wφ + b - ψ)²). Train W with the model.
    Inputs are checked as for :class:`AFTPrior` (same rows, B ≥ 2, finite)."""

    def __init__(self, student_dim: int, teacher_dim: int) -> None:
        super().__init__()
        for name, value in (("student_dim", student_dim), ("teacher_dim", teacher_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.teacher_dim = int(teacher_dim)
        self.proj = nn.Linear(int(student_dim), int(teacher_dim))

    def forward(self, student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
        _check_pair(student_features, teacher_features, self.teacher_dim, "FeatureRegressionKD")
        if student_features.shape[1] != self.proj.in_features:
            raise ValueError(f"FeatureRegressionKD: student_features has {student_features.shape[1]} columns, "
                             f"but the map was built for student_dim = {self.proj.in_features}")
        pred = self.proj(student_features.float())
        return ((pred - teacher_features.float()) ** 2).mean()
