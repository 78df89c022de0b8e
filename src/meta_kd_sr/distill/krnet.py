"""KRNet: learned, texture-aware knowledge representation for feature distillation (docs/method.md).

A KRNet turns the teacher-student residual at one distilled position into texture-wise supervision: a small
generator G_phi reads the student feature and the teacher-student correlation R and emits N zero-mean,
unit-norm k x k kernels per image (high-pass, i.e. texture, filters); the loss is the mean L1 of every kernel
applied depthwise to F_T - F_S. Filtering is linear, so K * F_T - K * F_S = K * (F_T - F_S): the residual is
filtered once (exact, half the work). For per-image kernels the L1 is evaluated as an exact bilinear form
whose derivatives need no backward filtering (``meta_kd_sr.distill.texture``): it keeps the meta step cheap.

Convention: ``*`` is cross-correlation with zero 'same' padding (``F.conv2d`` semantics), the same kernel for
every channel of an image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from meta_kd_sr.distill.kdloss import KDLoss
from meta_kd_sr.distill.texture import filter_per_image, filter_per_pixel, texture_loss

__all__ = [
    "CORRELATIONS",
    "KRNetLoss",
    "correlation_map",
    "filter_per_image",
    "filter_per_pixel",
    "normalize_kernels",
    "texture_loss",
]

CORRELATIONS = ("cosine", "product", "absdiff")
KERNEL_WEIGHTINGS = ("mean", "softmax")
FEATURE_NORMS = (None, "rms")


def correlation_map(f_s: Tensor, f_t: Tensor, mode: str = "cosine", eps: float = 1e-8) -> Tensor:
    """Teacher-student correlation R, the KRNet's view of where the student disagrees with the teacher.

    Args:
        f_s: (B, C, H, W) student feature at teacher width.
        f_t: (B, C, H, W) teacher feature.
        mode: "cosine" (per-pixel cosine similarity over channels), "product" (product of per-pixel
            L2-normalised features; sums over C to the cosine) or "absdiff" (|F_T - F_S|).
        eps: guards the per-pixel norms.

    Returns:
        (B, 1, H, W) for "cosine", (B, C, H, W) otherwise.
    """
    if mode not in CORRELATIONS:
        raise ValueError(f"correlation must be one of {CORRELATIONS}, got {mode!r}")
    if mode == "cosine":  # as F.cosine_similarity (each norm clamped at eps), in a third of its time
        dot = (f_s * f_t).sum(dim=1, keepdim=True)
        norms = [torch.linalg.vector_norm(f, dim=1, keepdim=True).clamp_min(eps) for f in (f_s, f_t)]
        return dot / (norms[0] * norms[1])
    if mode == "product":
        return F.normalize(f_s, dim=1, eps=eps) * F.normalize(f_t, dim=1, eps=eps)
    return (f_t - f_s).abs()


def normalize_kernels(raw: Tensor, eps: float = 1e-12) -> Tensor:
    """Texture constraint: every kernel zero-mean (a high-pass filter) and of unit L2 norm.

    Unit norm stops the meta-learner from switching distillation off by shrinking the kernels.

    Args:
        raw: (..., k, k) unconstrained kernels.
        eps: lower bound on the norm (a constant kernel becomes all zeros instead of NaN).

    Returns:
        (..., k, k) kernels with sum 0 and L2 norm 1.
    """
    flat = raw.flatten(-2)
    flat = flat - flat.mean(dim=-1, keepdim=True)
    return F.normalize(flat, dim=-1, eps=eps).view_as(raw)


class KRNetLoss(KDLoss):
    """KRNet and its texture-wise distillation loss for one distilled position.

    The generator reads the student's own (pre-adapter) feature, so its width - and cost - follows the
    student's. Its inputs, including R, are detached by default: the kernels are the meta-learner's choice
    only. If the student could move the kernels through its features, it could lower the KD loss by steering
    them (e.g. into directions where the residual is smooth) instead of by matching the teacher, and the
    pseudo step's gradient would mix that shortcut into the meta-gradient.

    Args:
        channels: C, teacher width (f_s arrives already mapped to it by the distiller's adapter).
        student_channels: C_s, student width of ``f_s_raw``; defaults to ``channels``.
        n_kernels: N kernels per image.
        kernel_size: k, odd.
        hidden: generator width.
        correlation: "cosine" | "product" | "absdiff" (see ``correlation_map``).
        use_correlation: feed R to the generator (False: ablation without R).
        dynamic: input-dependent kernels (False: ablation, N learned static kernels).
        spatial: per-pixel kernels (generator without pooling, a 1x1 conv head).
        kernel_weighting: "mean" or "softmax" (learned softmax weights over the N kernels).
        feature_norm: None or "rms" (divide F_T and F_S by the teacher feature's per-image RMS).
        detach_input: detach the generator's inputs (student feature and R).
    """

    needs_adapter = True
    uses_raw_student = True
    needs_channels = True

    def __init__(
        self,
        channels: int,
        student_channels: int | None = None,
        n_kernels: int = 8,
        kernel_size: int = 3,
        hidden: int = 64,
        correlation: str = "cosine",
        use_correlation: bool = True,
        dynamic: bool = True,
        spatial: bool = False,
        kernel_weighting: str = "mean",
        feature_norm: str | None = None,
        detach_input: bool = True,
    ) -> None:
        student_channels = channels if student_channels is None else student_channels
        super().__init__(channels, student_channels)
        for name, value in (("channels", channels), ("student_channels", student_channels)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if n_kernels < 1 or hidden < 1:
            raise ValueError(f"n_kernels and hidden must be >= 1, got {n_kernels} and {hidden}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and positive ('same' padding), got {kernel_size}")
        if correlation not in CORRELATIONS:
            raise ValueError(f"correlation must be one of {CORRELATIONS}, got {correlation!r}")
        if kernel_weighting not in KERNEL_WEIGHTINGS:
            raise ValueError(f"kernel_weighting must be one of {KERNEL_WEIGHTINGS}, got {kernel_weighting!r}")
        if feature_norm not in FEATURE_NORMS:
            raise ValueError(f"feature_norm must be one of {FEATURE_NORMS}, got {feature_norm!r}")
        if spatial and not dynamic:
            raise ValueError("spatial=True needs dynamic=True: static kernels cannot follow the image size")
        self.n_kernels, self.kernel_size = n_kernels, kernel_size
        self.correlation, self.use_correlation = correlation, use_correlation
        self.dynamic, self.spatial, self.detach_input = dynamic, spatial, detach_input
        self.kernel_weighting, self.feature_norm = kernel_weighting, feature_norm
        out = n_kernels * kernel_size * kernel_size
        if dynamic:
            r_channels = (1 if correlation == "cosine" else channels) if use_correlation else 0
            # In-place activations: autograd then keeps one (B, hidden, H, W) tensor per layer, not two.
            self.body = nn.Sequential(
                nn.Conv2d(student_channels + r_channels, hidden, 3, padding=1),
                nn.LeakyReLU(0.2, inplace=True),
                nn.Conv2d(hidden, hidden, 3, padding=1),
                nn.LeakyReLU(0.2, inplace=True),
            )
            self.head = nn.Conv2d(hidden, out, 1) if spatial else nn.Linear(hidden, out)
        else:
            self.static_kernels = nn.Parameter(torch.randn(n_kernels, kernel_size, kernel_size))
        if kernel_weighting == "softmax":
            self.kernel_logits = nn.Parameter(torch.zeros(n_kernels))

    def _check(self, f_s: Tensor, f_t: Tensor, f_s_raw: Tensor | None) -> Tensor:
        if f_s.dim() != 4 or f_s.shape != f_t.shape:
            raise ValueError(
                f"f_s and f_t must both be (B, C, H, W) of equal shape, got {tuple(f_s.shape)} and "
                f"{tuple(f_t.shape)} (map the student to teacher width with an adapter first)"
            )
        if f_t.shape[1] != self.channels:
            raise ValueError(
                f"expected {self.channels} teacher channels, got f_t of shape {tuple(f_t.shape)}"
            )
        f_s_raw = f_s if f_s_raw is None else f_s_raw
        b, _, h, w = f_s.shape
        if tuple(f_s_raw.shape) != (b, self.student_channels, h, w):
            raise ValueError(
                f"f_s_raw must be (B, C_s, H, W) = {(b, self.student_channels, h, w)}, "
                f"got {tuple(f_s_raw.shape)}"
            )
        return f_s_raw

    def _normalized(self, f_s: Tensor, f_t: Tensor) -> tuple[Tensor, Tensor]:
        if self.feature_norm != "rms":
            return f_s, f_t
        rms = f_t.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt().clamp_min(1e-8)
        return f_s / rms, f_t / rms

    def _generate(self, f_s: Tensor, f_t: Tensor, f_s_raw: Tensor, prepared: Tensor | None = None) -> Tensor:
        b, n, k = f_s.shape[0], self.n_kernels, self.kernel_size
        if not self.dynamic:
            return normalize_kernels(self.static_kernels).expand(b, n, k, k)
        x = self._generator_input(f_s, f_t, f_s_raw) if prepared is None else self._checked(prepared, f_s_raw)
        x = self.body(x)
        if self.spatial:
            h, w = x.shape[-2:]
            raw = self.head(x).view(b, n, k, k, h, w).permute(0, 1, 4, 5, 2, 3)
        else:
            raw = self.head(x.mean(dim=(2, 3))).view(b, n, k, k)
        return normalize_kernels(raw)

    def _generator_input(self, f_s: Tensor, f_t: Tensor, f_s_raw: Tensor) -> Tensor:
        """concat(F_S, R), channels-last, from normalised features; without a graph if ``detach_input``."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.detach_input):
            inputs = [f_s_raw]
            if self.use_correlation:
                inputs.append(correlation_map(f_s, f_t, self.correlation))
            # channels-last: the generator's convs run 1.3-2x faster on CPU (oneDNN), same values
            return torch.cat(inputs, dim=1).contiguous(memory_format=torch.channels_last)

    @staticmethod
    def _checked(prepared: Tensor, f_s_raw: Tensor) -> Tensor:
        if prepared.shape[0] != f_s_raw.shape[0] or prepared.shape[2:] != f_s_raw.shape[2:]:
            raise ValueError(
                f"prepared generator input {tuple(prepared.shape)} does not fit the student feature "
                f"{tuple(f_s_raw.shape)}: prepare() was called on another batch"
            )
        return prepared

    def prepare(self, f_s: Tensor, f_t: Tensor, f_s_raw: Tensor | None = None) -> Tensor | None:
        """The generator's input concat(F_S, R), which phi does not change; ``None`` unless ``detach_input``.

        Pass it back as ``forward(..., prepared=...)`` for evaluations on the same features while only phi
        changes (the meta step's inner loss and the real student step of one iteration): it is built once.

        Args:
            f_s: (B, C, H, W) student feature at teacher width.
            f_t: (B, C, H, W) teacher feature.
            f_s_raw: (B, C_s, H, W) student feature before the adapter (None: ``f_s``).

        Returns:
            (B, C_s + C_R, H, W) channels-last, no graph; ``None`` for static kernels or attached inputs.
        """
        if not (self.dynamic and self.detach_input):
            return None
        f_s_raw = self._check(f_s, f_t, f_s_raw)
        f_s, f_t = self._normalized(f_s, f_t)
        with torch.no_grad():
            return self._generator_input(f_s, f_t, f_s_raw)

    def kernels(self, f_s: Tensor, f_t: Tensor, f_s_raw: Tensor | None = None) -> Tensor:
        """Texture kernels for a batch.

        Args:
            f_s: (B, C, H, W) student feature at teacher width.
            f_t: (B, C, H, W) teacher feature.
            f_s_raw: (B, C_s, H, W) student feature before the adapter (None: ``f_s``).

        Returns:
            (B, N, k, k) zero-mean unit-norm kernels, or (B, N, H, W, k, k) when ``spatial``.
        """
        f_s_raw = self._check(f_s, f_t, f_s_raw)
        f_s, f_t = self._normalized(f_s, f_t)
        return self._generate(f_s, f_t, f_s_raw)

    def forward(
        self, f_s: Tensor, f_t: Tensor, f_s_raw: Tensor | None = None, prepared: Tensor | None = None
    ) -> Tensor:
        """Texture-wise distillation loss L = sum_i w_i mean |K_i * (F_T - F_S)|.

        Args:
            f_s: (B, C, H, W) student feature at teacher width (graph attached).
            f_t: (B, C, H, W) teacher feature.
            f_s_raw: (B, C_s, H, W) student feature before the adapter (None: ``f_s``).
            prepared: ``prepare(f_s, f_t, f_s_raw)`` of these same features, or None (built here).

        Returns:
            Scalar loss.
        """
        f_s_raw = self._check(f_s, f_t, f_s_raw)
        f_s, f_t = self._normalized(f_s, f_t)
        kernels = self._generate(f_s, f_t, f_s_raw, prepared)
        weights = self.kernel_logits.softmax(dim=0) if self.kernel_weighting == "softmax" else None
        return texture_loss(f_t - f_s, kernels, weights)
