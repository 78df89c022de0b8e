"""Meta-learning of the KRNets: the only package that imports ``higher``."""

from __future__ import annotations

from meta_kd_sr.meta.carried import InnerGradient
from meta_kd_sr.meta.step import ENGINES, PSEUDO_KINDS, MetaResult, PseudoStep, ddp_grad_mean, meta_gradient

__all__ = [
    "ENGINES",
    "PSEUDO_KINDS",
    "InnerGradient",
    "MetaResult",
    "PseudoStep",
    "ddp_grad_mean",
    "meta_gradient",
]
