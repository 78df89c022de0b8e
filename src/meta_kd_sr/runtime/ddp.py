"""What DistributedDataParallel does not do for :class:`~meta_kd_sr.training.module.SRModule`, done by hand.

DDP reduces only the gradients that reach parameters through ``backward``. The meta step takes its
gradients with ``torch.autograd.grad`` (never reduced by DDP), and the frozen teacher must not be wrapped at
all. So the module excludes the teacher and the KRNets from DDP (:func:`exclude_from_ddp`), broadcasts the
KRNets once at the start (:func:`broadcast_`; DDP only broadcasts what it wraps) and averages their
meta-gradients itself (:func:`all_reduce_mean`). The pseudo gradient is averaged differentiably by
:func:`meta_kd_sr.meta.ddp_grad_mean`. The collectives do nothing on a single process.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


def world_size() -> int:
    """Number of processes of the default process group (1 when torch.distributed is not initialised)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def names_under(module: nn.Module, prefixes: Sequence[str]) -> list[str]:
    """Fully qualified names of the parameters and buffers of ``module`` under the submodules ``prefixes``.

    Args:
        module: the module DDP will wrap (names are relative to it).
        prefixes: dotted submodule names, e.g. ``("teacher", "distiller.kd_losses")``; missing or ``None``
            submodules contribute nothing.

    Returns:
        Sorted names such as ``"teacher.conv_first.weight"``.
    """
    names = set()
    for prefix in prefixes:
        if not prefix:
            raise ValueError("a DDP exclusion prefix must be a non-empty submodule name, got ''")
        try:
            sub = module.get_submodule(prefix)
        except AttributeError:
            continue
        if sub is None:
            continue
        names.update(f"{prefix}.{n}" for n, _ in sub.named_parameters())
        names.update(f"{prefix}.{n}" for n, _ in sub.named_buffers())
    return sorted(names)


def exclude_from_ddp(module: nn.Module, prefixes: Sequence[str]) -> list[str]:
    """Tell DDP to neither wrap, reduce nor broadcast the parameters and buffers under ``prefixes``.

    Call it before the strategy wraps ``module`` (e.g. in ``LightningModule.setup``).

    Returns:
        The excluded names.
    """
    names = names_under(module, prefixes)
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, names)
    return names


def broadcast_(tensors: Sequence[torch.Tensor], src: int = 0) -> None:
    """Overwrite ``tensors`` in place with their values on rank ``src`` (one flat collective).

    Args:
        tensors: same shapes and dtypes on every rank (e.g. the KRNet parameters).
        src: global rank that holds the reference values.
    """
    tensors = list(tensors)
    if world_size() == 1 or not tensors:
        return
    for dtype in sorted({t.dtype for t in tensors}, key=str):
        group = [t for t in tensors if t.dtype == dtype]
        flat = torch.cat([t.detach().reshape(-1) for t in group])
        dist.broadcast(flat, src=src)
        with torch.no_grad():
            for t, value in zip(group, flat.split([t.numel() for t in group])):
                t.copy_(value.view_as(t))


def all_reduce_mean(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Cross-rank means of ``tensors`` (not differentiable; one flat collective); inputs are not modified.

    Args:
        tensors: same shapes and dtype on every rank, e.g. the per-rank meta-gradients of the KRNets.

    Returns:
        New tensors, shaped as the inputs.
    """
    tensors = list(tensors)
    n = world_size()
    if n == 1 or not tensors:
        return tensors
    flat = torch.cat([t.detach().reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= n
    return [c.view_as(t) for c, t in zip(flat.split([t.numel() for t in tensors]), tensors)]
