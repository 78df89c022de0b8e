"""Meta-learning of the KRNets and the training iteration: the only package that imports ``higher``.

``iteration.run_iteration`` is one training iteration, its docstring the order of the stages; ``step``
the meta-gradient with its engines ("higher", "func", and "reference", the textbook definition they are
tested against); ``settings.MetaSettings`` the ``meta`` config group; ``health``, ``accumulate`` and
``signal`` what meta steps carry to the next (noise logs, the meta-gradient window, the whole-run z).
"""

from __future__ import annotations

from meta_kd_sr.meta.iteration import run_iteration
from meta_kd_sr.meta.settings import MetaSettings
from meta_kd_sr.meta.step import ENGINES, PSEUDO_KINDS, MetaResult, PseudoStep, ddp_grad_mean, meta_gradient

__all__ = [
    "ENGINES",
    "PSEUDO_KINDS",
    "MetaResult",
    "MetaSettings",
    "PseudoStep",
    "ddp_grad_mean",
    "meta_gradient",
    "run_iteration",
]
