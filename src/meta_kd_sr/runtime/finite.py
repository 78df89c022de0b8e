"""The NaN/inf policy of a training iteration: what is checked, and the error that stops the run.

- A non-finite student loss term stops the run before any backward or optimizer step.
- A non-finite student gradient stops the run before the optimizer step.
- A non-finite meta-gradient skips that KRNet update (``meta_kd_sr.meta.iteration``); the run goes on.

Each check is one fused reduction and one host synchronisation, whatever the number of tensors.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor


class NonFiniteError(FloatingPointError):
    """A loss term or a gradient of the student became NaN or infinite; the run cannot go on."""


def _where(iteration: int | None) -> str:
    return "" if iteration is None else f" at iteration {iteration}"


def first_nonfinite_index(tensors: Sequence[Tensor]) -> int | None:
    """Index of the first tensor holding a NaN or an infinity, or ``None`` when all are finite.

    One ``torch._foreach_norm`` and one ``isfinite`` per device (a checkpoint holds CUDA weights beside CPU
    counters): one synchronisation per device instead of one per tensor. A finite L2 norm means every element
    is finite; only when a norm is not (a bad element, or a sum of squares that overflows) are the tensors
    looked at one by one.

    Args:
        tensors: any shapes, floating dtypes, any devices.
    """
    groups: dict[torch.device, list[int]] = {}
    for i, t in enumerate(tensors):
        if t.numel():  # an empty tensor is finite
            groups.setdefault(t.device, []).append(i)
    suspects: list[int] = []
    for index in groups.values():
        norms = torch._foreach_norm([tensors[i] for i in index])  # pyright: ignore[reportPrivateImportUsage]
        dtype = norms[0].dtype
        finite = torch.stack([n if n.dtype == dtype else n.to(dtype) for n in norms]).isfinite()
        if not bool(finite.all()):
            suspects += [index[int(j)] for j in (~finite).nonzero().flatten()]
    return next((i for i in sorted(suspects) if not bool(tensors[i].isfinite().all())), None)


def check_terms(terms: Mapping[str, Tensor], iteration: int | None = None) -> None:
    """Raise ``NonFiniteError`` when a loss term is not finite, naming the first bad one and all values.

    Args:
        terms: the scalar loss terms by name (``loss_rec``, ``loss_kd``, ..., ``loss``), in the order the
            distiller builds them (parts before their sums, so the first bad term is the most specific).
        iteration: the training iteration, named in the message (``None``: not known).

    Raises:
        NonFiniteError: e.g. ``train/loss_kd is nan at iteration 12; loss terms: loss_rec=0.03, loss_kd=nan``.
    """
    names = list(terms)
    values = [terms[n].detach() for n in names]
    bad = first_nonfinite_index(values)
    if bad is None:
        return
    listed = ", ".join(f"{n}={float(v):.4g}" for n, v in zip(names, values))
    raise NonFiniteError(
        f"train/{names[bad]} is {float(values[bad])}{_where(iteration)}; loss terms: {listed}"
    )


def check_grads(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    name_of: Callable[[Tensor], str],
    iteration: int | None = None,
) -> None:
    """Raise ``NonFiniteError`` when a gradient is not finite, naming the first such parameter.

    Args:
        params: the parameters, in the optimizer's order.
        grads: their gradients (same order).
        name_of: the parameter's qualified name (only called when a gradient is bad).
        iteration: the training iteration, named in the message (``None``: not known).

    Raises:
        NonFiniteError: before any optimizer step, e.g. ``the gradient of student.body.0.weight is not finite
            (nan) at iteration 3; no optimizer step was taken``.
    """
    bad = first_nonfinite_index(grads)
    if bad is None:
        return
    kind = "nan" if bool(grads[bad].isnan().any()) else "inf"
    raise NonFiniteError(
        f"the gradient of {name_of(params[bad])} is not finite ({kind}){_where(iteration)}; "
        "no optimizer step was taken"
    )


def finite_or_none(value: Any) -> Any:
    """``value`` with NaN/inf floats replaced by ``None`` (nested dicts and lists): strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_none(v) for v in value]
    return value


def _tensors(obj: Any, where: str) -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(obj, torch.Tensor):
        yield where, obj
    elif isinstance(obj, Mapping):
        for key, value in obj.items():
            yield from _tensors(value, f"{where}.{key}" if where else str(key))
    elif isinstance(obj, list | tuple):
        for i, value in enumerate(obj):
            yield from _tensors(value, f"{where}[{i}]")


def first_nonfinite_name(obj: Any) -> str | None:
    """The name of the first floating tensor in ``obj`` (nested dicts/lists) holding NaN/inf, or ``None``."""
    named = [(where, t) for where, t in _tensors(obj, "") if t.is_floating_point()]
    bad = first_nonfinite_index([t for _, t in named])
    return None if bad is None else named[bad][0]
