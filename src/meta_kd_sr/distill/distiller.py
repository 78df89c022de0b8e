"""The Distiller: turns student/teacher outputs and features into named loss terms."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from meta_kd_sr.distill.kdloss import loss_class
from meta_kd_sr.distill.losses import output_loss


class Distiller(nn.Module):
    """Reconstruction, output-KD and feature-KD terms of one training step, returned by name.

    The total is ``loss = rec_weight * loss_rec + output_weight * loss_out + kd_weight * loss_kd`` where
    ``loss_kd = sum_l position_weights[l] * loss_kd_<l>`` is reported *without* ``kd_weight``.

    Methods: scratch ``Distiller()``; output KD ``Distiller(output_weight=0.5, rec_weight=0.5)``; FitNet, AT,
    FSP, FAKD ``Distiller(loss=FAKDLoss, kd_weight=10.0, ...)``; KRNet ``Distiller(loss=KRNetLoss, ...)``.

    Args:
        loss: a :class:`~meta_kd_sr.distill.kdloss.KDLoss` subclass or a ``functools.partial`` of one (e.g.
            from a Hydra ``_partial_: true`` config), called once per position (once in all for pairwise
            losses) as ``loss(channels=teacher_channels[pos], student_channels=student_channels[pos])``
            (``None`` for a width not given). Its class flags say what the Distiller does for it.
            ``None``: no feature KD.
        positions: feature keys to distil.
        kd_weight: weight of ``loss_kd`` in the total.
        position_weights: one weight per position (default all 1); not allowed for pairwise losses.
        rec_weight: weight of the L1 loss between ``sr_s`` and ``gt``.
        output_weight: weight of the L1 loss between ``sr_s`` and the teacher's ``sr_t`` (0: off).
        student_channels: channel count per position of the student features.
        teacher_channels: channel count per position of the teacher features. With both maps, a 1x1 conv
            adapter (student side, dropped at inference) is built where widths differ and the loss
            declares ``needs_adapter``.
        feature_scale: factor applied to student and teacher features before the KD losses. Networks with
            ``img_range=255`` (EDSR/RCAN, as in the official code) carry features on the 0-255 scale;
            ``1 / 255`` brings the scale-dependent losses (FitNet, FSP, KRNet) back to image units so that
            their weights sit next to the L1 image loss. AT and FAKD are scale-invariant.
        meta_learn: whether learnable KD losses (KRNets) are trained by the meta step. ``False`` freezes
            them at their initialisation (the "no meta-learning" ablation): ``meta_parameters()`` is empty.

    """

    def __init__(
        self,
        loss: Callable[..., nn.Module] | None = None,
        positions: Sequence[str] = ("f1", "f2", "f3"),
        kd_weight: float = 1.0,
        position_weights: Sequence[float] | None = None,
        rec_weight: float = 1.0,
        output_weight: float = 0.0,
        student_channels: Mapping[str, int] | None = None,
        teacher_channels: Mapping[str, int] | None = None,
        feature_scale: float = 1.0,
        meta_learn: bool = True,
    ) -> None:
        super().__init__()
        self.meta_learn = meta_learn
        if not feature_scale > 0:
            raise ValueError(f"feature_scale must be > 0, got {feature_scale}")
        self.feature_scale = float(feature_scale)
        self.positions = tuple(positions)
        if loss is not None and not self.positions:
            raise ValueError("Distiller needs at least one position when a KD loss is given")
        if len(set(self.positions)) != len(self.positions):
            raise ValueError(f"Distiller positions must be unique, got {list(self.positions)}")
        for name, mapping in (("student_channels", student_channels), ("teacher_channels", teacher_channels)):
            missing = [p for p in self.positions if mapping is not None and p not in mapping]
            if missing:
                raise ValueError(
                    f"{name} has no entry for positions {missing}; it has {sorted(mapping or {})}"
                )
        if output_weight < 0 or rec_weight < 0 or kd_weight < 0:
            raise ValueError(
                f"loss weights must be >= 0, got rec {rec_weight}, output {output_weight}, kd {kd_weight}"
            )
        self.kd_weight = float(kd_weight)
        self.rec_weight = float(rec_weight)
        self.output_weight = float(output_weight)
        self.has_kd_loss = loss is not None
        self.kd_losses = nn.ModuleDict()
        self.adapters = nn.ModuleDict()
        self.pairwise = False
        self.needs_adapter = False
        if loss is not None:
            self._build_losses(loss, student_channels, teacher_channels)
        self.position_weights = self._check_position_weights(position_weights)

    def _build_losses(
        self,
        factory: Callable[..., nn.Module],
        student_channels: Mapping[str, int] | None,
        teacher_channels: Mapping[str, int] | None,
    ) -> None:
        cls = loss_class(factory)
        if cls.needs_channels and teacher_channels is None:
            raise ValueError(
                f"the KD loss {cls.__name__} needs `channels` but the Distiller was given no teacher_channels"
            )
        self.pairwise, self.needs_adapter = cls.pairwise, cls.needs_adapter
        widths = {
            pos: (
                None if teacher_channels is None else int(teacher_channels[pos]),
                None if student_channels is None else int(student_channels[pos]),
            )
            for pos in self.positions
        }
        # losses first, then adapters: the order the parameters are initialised in (seeded runs)
        for pos in self.positions[:1] if self.pairwise else self.positions:
            c_t, c_s = widths[pos]
            self.kd_losses["pairwise" if self.pairwise else pos] = factory(channels=c_t, student_channels=c_s)
        if not self.meta_learn:
            self.kd_losses.requires_grad_(False)
        for pos, (c_t, c_s) in widths.items():
            if self.needs_adapter and c_s is not None and c_t is not None and c_s != c_t:
                self.adapters[pos] = nn.Conv2d(c_s, c_t, kernel_size=1)
            else:
                self.adapters[pos] = nn.Identity()

    def _check_position_weights(self, position_weights: Sequence[float] | None) -> tuple[float, ...]:
        if position_weights is None:
            return tuple(1.0 for _ in self.positions)
        if self.pairwise:
            raise ValueError("position_weights apply to per-position losses; this KD loss is pairwise")
        weights = tuple(float(w) for w in position_weights)
        if len(weights) != len(self.positions):
            raise ValueError(
                f"position_weights has {len(weights)} entries but there are {len(self.positions)} "
                f"positions {list(self.positions)}"
            )
        return weights

    @property
    def needs_teacher(self) -> bool:
        """Whether ``forward`` needs the teacher's output or features."""
        return self.output_weight > 0 or self.has_kd_loss

    @property
    def needs_feats(self) -> bool:
        """Whether ``forward`` needs intermediate features (student and teacher)."""
        return self.has_kd_loss

    def meta_parameters(self) -> list[nn.Parameter]:
        """Parameters of the KD loss modules (KRNets); empty for hand-crafted losses or when frozen."""
        return list(self.kd_losses.parameters()) if self.meta_learn else []

    def student_side_parameters(self) -> list[nn.Parameter]:
        """Adapter parameters, trained with the student and dropped at inference."""
        return list(self.adapters.parameters())

    def _gather(self, feats: Mapping[str, torch.Tensor], who: str) -> list[torch.Tensor]:
        missing = [p for p in self.positions if p not in feats]
        if missing:
            raise ValueError(f"{who} features have no positions {missing}; available keys: {sorted(feats)}")
        return [feats[p] for p in self.positions]

    def _adapt(self, pos: str, f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        adapter = self.adapters[pos]
        if self.needs_adapter and isinstance(adapter, nn.Identity) and f_s.dim() == f_t.dim() == 4:
            if f_s.shape[1] != f_t.shape[1]:
                raise ValueError(
                    f"position {pos}: student has {f_s.shape[1]} channels, teacher {f_t.shape[1]}; pass "
                    "student_channels and teacher_channels to the Distiller so it builds a 1x1 adapter"
                )
        return adapter(f_s)

    def _kd_inputs(
        self, feats_s: Mapping[str, torch.Tensor], feats_t: Mapping[str, torch.Tensor]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """Per position: the scaled student feature, the same through its adapter, the detached teacher's."""
        c = self.feature_scale
        list_s = [f * c if c != 1.0 else f for f in self._gather(feats_s, "student")]
        list_t = [(f * c if c != 1.0 else f).detach() for f in self._gather(feats_t, "teacher")]
        adapted = [self._adapt(p, f_s, f_t) for p, f_s, f_t in zip(self.positions, list_s, list_t)]
        return list_s, adapted, list_t

    @torch.no_grad()
    def prepare(
        self, feats_s: Mapping[str, torch.Tensor], feats_t: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """The KD losses' inputs that their parameters (phi) do not change, by position (``KDLoss.prepare``).

        Built once per meta iteration and passed as ``forward(..., prepared=...)`` to both evaluations on the
        same features (the meta step's inner loss and the real student step after the KRNet step).

        Args:
            feats_s: student features by name (their values only are read).
            feats_t: teacher features by name.

        Returns:
            ``{position: tensor}`` for the losses that have such an input (KRNets with detached inputs).
        """
        return self._per_position("prepare", feats_s, feats_t)

    @torch.no_grad()
    def kernels(
        self, feats_s: Mapping[str, torch.Tensor], feats_t: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """The texture kernels the KD losses that make them (KRNets) make for these features, by position.

        Returns:
            ``{position: (B, N, k, k)}`` (or ``(B, N, H, W, k, k)`` for per-pixel kernels); ``{}`` when no
            KD loss has a ``kernels`` method.
        """
        return self._per_position("kernels", feats_s, feats_t)

    def _per_position(
        self, method: str, feats_s: Mapping[str, torch.Tensor], feats_t: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """``{position: kd_loss.<method>(f_s, f_t, raw)}`` where the position's loss has ``method``.

        Positions whose loss lacks the method or returns ``None`` are left out; ``{}`` without KD losses or
        with pairwise ones.
        """
        if not self.has_kd_loss or self.pairwise:
            return {}
        out = {}
        for pos, raw, f_s, f_t in zip(self.positions, *self._kd_inputs(feats_s, feats_t)):
            method_fn = getattr(self.kd_losses[pos], method, None)
            value = method_fn(f_s, f_t, raw) if callable(method_fn) else None
            if value is not None:
                out[pos] = value
        return out

    def kd_terms(
        self,
        feats_s: Mapping[str, torch.Tensor],
        feats_t: Mapping[str, torch.Tensor],
        prepared: Mapping[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Feature-KD terms: ``loss_kd_<pos>`` per position (per-position losses) and their weighted sum.

        Args:
            feats_s: student features by name, each (B, C_s, h, w).
            feats_t: teacher features by name, each (B, C_t, h, w); treated as fixed targets (detached).
            prepared: ``prepare(feats_s, feats_t)`` of these same features, or None.

        Returns:
            ``{"loss_kd_<pos>": ..., "loss_kd": sum_l position_weights[l] * loss_kd_<l>}`` (without
            ``kd_weight``); a pairwise loss gives ``loss_kd`` only.

        """
        if not self.has_kd_loss:
            raise ValueError("kd_terms needs a KD loss; this Distiller was built with loss=None")
        list_s, adapted, list_t = self._kd_inputs(feats_s, feats_t)
        if self.pairwise:
            return {"loss_kd": self.kd_losses["pairwise"](adapted, list_t)}
        prepared = prepared or {}
        terms = {}
        for pos, raw, f_s, f_t in zip(self.positions, list_s, adapted, list_t):
            module = self.kd_losses[pos]
            extra = {"f_s_raw": raw} if module.uses_raw_student else {}
            if pos in prepared:
                extra["prepared"] = prepared[pos]
            terms[f"loss_kd_{pos}"] = module(f_s, f_t, **extra)
        terms["loss_kd"] = sum(
            w * terms[f"loss_kd_{p}"] for p, w in zip(self.positions, self.position_weights)
        )
        return terms

    def forward(
        self,
        sr_s: torch.Tensor,
        feats_s: Mapping[str, torch.Tensor] | None,
        gt: torch.Tensor,
        sr_t: torch.Tensor | None = None,
        feats_t: Mapping[str, torch.Tensor] | None = None,
        prepared: Mapping[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Compute the named loss terms and their total.

        Args:
            sr_s: (B, 3, H, W) student output.
            feats_s: student features by name (only read when a KD loss is set).
            gt: (B, 3, H, W) ground truth.
            sr_t: (B, 3, H, W) teacher output, needed when ``output_weight > 0``.
            feats_t: teacher features by name, needed when a KD loss is set.
            prepared: ``prepare(feats_s, feats_t)`` of these same features (meta iterations), or None.

        Returns:
            ``loss_rec``, ``loss_out`` (if ``output_weight > 0``), ``loss_kd`` and ``loss_kd_<pos>`` (if a KD
            loss is set) and ``loss`` (the weighted total).

        """
        if sr_s.shape != gt.shape:
            raise ValueError(f"student output {tuple(sr_s.shape)} and gt {tuple(gt.shape)} differ in shape")
        out = {"loss_rec": F.l1_loss(sr_s, gt)}
        total = self.rec_weight * out["loss_rec"]
        if self.output_weight > 0:
            if sr_t is None:
                raise ValueError(
                    f"output_weight={self.output_weight} needs the teacher output sr_t, got None"
                )
            out["loss_out"] = output_loss(sr_s, sr_t.detach())
            total = total + self.output_weight * out["loss_out"]
        if self.has_kd_loss:
            if feats_s is None or feats_t is None:
                who = "student" if feats_s is None else "teacher"
                raise ValueError(f"the KD loss needs {who} features, got None")
            out.update(self.kd_terms(feats_s, feats_t, prepared))
            total = total + self.kd_weight * out["loss_kd"]
        out["loss"] = total
        return out
