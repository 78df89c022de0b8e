"""Hand-crafted knowledge-distillation losses on SR features: FitNet, AT, FSP, FAKD and output KD.

Every loss is a function plus a thin :class:`~meta_kd_sr.distill.kdloss.KDLoss` module holding its
hyper-parameters and declaring the flags the :class:`~meta_kd_sr.distill.distiller.Distiller` reads:

- ``needs_adapter``: the loss compares features channel by channel, so a student narrower than the teacher
  needs a 1x1 adapter first (FitNet, FSP); AT and FAKD compare channel-free maps and need none.
- ``pairwise``: the loss is called once with the lists of features across positions (FSP) instead of once
  per position as ``loss(f_s, f_t)``.

None of them reads the widths the Distiller passes as ``channels=`` and ``student_channels=``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from meta_kd_sr.distill.kdloss import KDLoss


def _check_4d(name: str, x: torch.Tensor) -> None:
    if not torch.is_tensor(x) or x.dim() != 4:
        shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"{name} must be a (B, C, h, w) tensor, got {shape}")


def _check_pair(f_s: torch.Tensor, f_t: torch.Tensor, same_channels: bool) -> None:
    """Validate a student/teacher feature pair: 4-D, same batch and spatial size (and channels if asked)."""
    _check_4d("student feature", f_s)
    _check_4d("teacher feature", f_t)
    s, t = tuple(f_s.shape), tuple(f_t.shape)
    if s[0] != t[0] or s[2:] != t[2:]:
        raise ValueError(f"student feature {s} and teacher feature {t} differ in batch or spatial size")
    if same_channels and s[1] != t[1]:
        raise ValueError(
            f"student feature {s} has {s[1]} channels but teacher feature {t} has {t[1]}; "
            "use an adapter (1x1 conv) to map the student to the teacher width"
        )


def fitnet_loss(f_s: torch.Tensor, f_t: torch.Tensor, p: int = 1) -> torch.Tensor:
    """FitNet hint loss: ``mean |f_s - f_t|^p``.

    Args:
        f_s: (B, C, h, w) student feature, already mapped to the teacher width by a 1x1 regressor.
        f_t: (B, C, h, w) teacher feature.
        p: 1 (L1) or 2 (mean squared error).

    Returns:
        Scalar loss.

    """
    if p not in (1, 2):
        raise ValueError(f"fitnet_loss p must be 1 or 2, got {p}")
    _check_pair(f_s, f_t, same_channels=True)
    return (f_s - f_t).abs().pow(p).mean()


def attention_map(f: torch.Tensor, p: int = 2, eps: float = 1e-12) -> torch.Tensor:
    """Spatial attention map of Zagoruyko & Komodakis: ``sum_c |F_c|^p``, flattened, L2-normalised.

    Args:
        f: (B, C, h, w) feature.
        p: exponent applied to the absolute activations before summing over channels.
        eps: lower bound on the norm used for normalisation (an all-zero map stays zero).

    Returns:
        (B, h * w) unit-norm attention maps.

    """
    _check_4d("feature", f)
    if p <= 0:
        raise ValueError(f"attention_map p must be positive, got {p}")
    q = f.abs().pow(p).sum(dim=1).flatten(1)
    return F.normalize(q, p=2.0, dim=1, eps=eps)


def at_loss(f_s: torch.Tensor, f_t: torch.Tensor, p: int = 2, eps: float = 1e-12) -> torch.Tensor:
    """Attention transfer: batch mean of ``||Q_S - Q_T||_2`` with ``Q = attention_map(F, p)``.

    Channel counts of student and teacher may differ.

    Args:
        f_s: (B, C_s, h, w) student feature.
        f_t: (B, C_t, h, w) teacher feature.
        p: exponent of the attention map.
        eps: normalisation floor of the attention map.

    Returns:
        Scalar loss.

    """
    _check_pair(f_s, f_t, same_channels=False)
    diff = attention_map(f_s, p, eps) - attention_map(f_t, p, eps)
    return torch.linalg.vector_norm(diff, ord=2, dim=1).mean()


def fsp_matrix(f_a: torch.Tensor, f_b: torch.Tensor) -> torch.Tensor:
    """Flow-of-solution-procedure (Gram) matrix between two features: ``F_a F_b^T / (h * w)``.

    Args:
        f_a: (B, C_a, h, w) feature at the first position.
        f_b: (B, C_b, h, w) feature at the second position, same batch and spatial size.

    Returns:
        (B, C_a, C_b) FSP matrix.

    """
    _check_4d("first feature", f_a)
    _check_4d("second feature", f_b)
    a, b = tuple(f_a.shape), tuple(f_b.shape)
    if a[0] != b[0] or a[2:] != b[2:]:
        raise ValueError(f"fsp_matrix needs features of equal batch and spatial size, got {a} and {b}")
    hw = a[2] * a[3]
    return torch.bmm(f_a.flatten(2), f_b.flatten(2).transpose(1, 2)) / hw


def fsp_loss(feats_s: Sequence[torch.Tensor], feats_t: Sequence[torch.Tensor]) -> torch.Tensor:
    """FSP distillation: mean over consecutive positions (a, b) of ``mean (G_S - G_T)^2``.

    Args:
        feats_s: student features (B, C_l, h_l, w_l) at L >= 2 positions, adapted to the teacher widths.
        feats_t: teacher features at the same L positions.

    Returns:
        Scalar loss.

    """
    if len(feats_s) != len(feats_t):
        raise ValueError(
            f"fsp_loss needs as many student as teacher features, got {len(feats_s)} and {len(feats_t)}"
        )
    if len(feats_s) < 2:
        raise ValueError(f"fsp_loss needs at least 2 positions to form a pair, got {len(feats_s)}")
    for f_s, f_t in zip(feats_s, feats_t):
        _check_pair(f_s, f_t, same_channels=True)
    terms = [
        (fsp_matrix(feats_s[i], feats_s[i + 1]) - fsp_matrix(feats_t[i], feats_t[i + 1])).pow(2).mean()
        for i in range(len(feats_s) - 1)
    ]
    return torch.stack(terms).mean()


def spatial_affinity(f: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """FAKD spatial affinity: ``A = F_hat^T F_hat`` with ``F_hat`` L2-normalised over channels per pixel.

    Args:
        f: (B, C, h, w) feature.
        eps: lower bound on each pixel's norm, so an all-zero pixel gives a zero row instead of NaN.

    Returns:
        (B, h * w, h * w) cosine similarities between pixels (row-major pixel order).

    """
    _check_4d("feature", f)
    f_hat = F.normalize(f.flatten(2), p=2.0, dim=1, eps=eps)
    return torch.bmm(f_hat.transpose(1, 2), f_hat)


def fakd_loss(f_s: torch.Tensor, f_t: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Feature-affinity KD (FAKD, ICIP 2020): ``mean |A_S - A_T|``.

    Channel counts of student and teacher may differ. FAKD's weights (10 on this term, 0.5/0.5 on the output
    and ground-truth terms) belong to the distiller's configuration; FAKD's L1 terms act on images in
    [0, 255], so next to L1 terms on [0, 1] images its 10 becomes 10 / 255 (``conf/distill/fakd.yaml``).

    Args:
        f_s: (B, C_s, h, w) student feature.
        f_t: (B, C_t, h, w) teacher feature.
        eps: per-pixel norm floor of the affinity.

    Returns:
        Scalar loss.

    """
    _check_pair(f_s, f_t, same_channels=False)
    return (spatial_affinity(f_s, eps) - spatial_affinity(f_t, eps)).abs().mean()


def output_loss(sr_s: torch.Tensor, sr_t: torch.Tensor) -> torch.Tensor:
    """Output KD: L1 between the student's and the teacher's SR images.

    Args:
        sr_s: (B, 3, H, W) student output.
        sr_t: (B, 3, H, W) teacher output.

    Returns:
        Scalar loss.

    """
    _check_4d("student output", sr_s)
    _check_4d("teacher output", sr_t)
    if sr_s.shape != sr_t.shape:
        raise ValueError(
            f"student output {tuple(sr_s.shape)} and teacher output {tuple(sr_t.shape)} differ in shape"
        )
    return F.l1_loss(sr_s, sr_t)


class FitNetLoss(KDLoss):
    """Module form of :func:`fitnet_loss`; needs an adapter when widths differ."""

    needs_adapter = True

    def __init__(
        self, p: int = 1, *, channels: int | None = None, student_channels: int | None = None
    ) -> None:
        super().__init__(channels, student_channels)
        if p not in (1, 2):
            raise ValueError(f"FitNetLoss p must be 1 or 2, got {p}")
        self.p = p

    def forward(self, f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        """See :func:`fitnet_loss`."""
        return fitnet_loss(f_s, f_t, self.p)


class ATLoss(KDLoss):
    """Module form of :func:`at_loss`; compares channel-free maps, no adapter."""

    def __init__(
        self,
        p: int = 2,
        eps: float = 1e-12,
        *,
        channels: int | None = None,
        student_channels: int | None = None,
    ) -> None:
        super().__init__(channels, student_channels)
        if p <= 0:
            raise ValueError(f"ATLoss p must be positive, got {p}")
        self.p = p
        self.eps = eps

    def forward(self, f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        """See :func:`at_loss`."""
        return at_loss(f_s, f_t, self.p, self.eps)


class FSPLoss(KDLoss):
    """Module form of :func:`fsp_loss`; pairwise across positions, needs adapters when widths differ."""

    needs_adapter = True
    pairwise = True

    def forward(self, feats_s: Sequence[torch.Tensor], feats_t: Sequence[torch.Tensor]) -> torch.Tensor:
        """See :func:`fsp_loss`."""
        return fsp_loss(feats_s, feats_t)


class FAKDLoss(KDLoss):
    """Module form of :func:`fakd_loss`; compares channel-free affinities, no adapter."""

    def __init__(
        self, eps: float = 1e-7, *, channels: int | None = None, student_channels: int | None = None
    ) -> None:
        super().__init__(channels, student_channels)
        self.eps = eps

    def forward(self, f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        """See :func:`fakd_loss`."""
        return fakd_loss(f_s, f_t, self.eps)


class OutputLoss(nn.Module):
    """Module form of :func:`output_loss`."""

    def forward(self, sr_s: torch.Tensor, sr_t: torch.Tensor) -> torch.Tensor:
        """See :func:`output_loss`."""
        return output_loss(sr_s, sr_t)
