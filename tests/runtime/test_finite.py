"""The NaN/inf checks: which tensor is bad, and the message a user reads."""

from __future__ import annotations

import json
import re

import pytest
import torch

from meta_kd_sr.runtime.finite import (
    NonFiniteError,
    check_grads,
    check_terms,
    finite_or_none,
    first_nonfinite_index,
)

NAN, INF = float("nan"), float("inf")


def test_first_nonfinite_finds_the_first_bad_tensor() -> None:
    ok = [torch.randn(3, 2), torch.full((4,), 1e30), torch.zeros(0)]
    assert first_nonfinite_index(ok) is None and first_nonfinite_index([]) is None
    assert first_nonfinite_index([*ok, torch.tensor([1.0, NAN]), torch.tensor([INF])]) == 3
    assert first_nonfinite_index([torch.tensor([-INF], dtype=torch.float64), torch.tensor([NAN])]) == 0
    # large but finite: a sum of squares that overflows float32 is not a non-finite value
    assert first_nonfinite_index([torch.full((1000,), 3e38)]) is None


def test_check_terms_names_the_iteration_the_bad_term_and_every_value() -> None:
    terms = {"loss_rec": torch.tensor(0.03), "loss_kd": torch.tensor(NAN), "loss": torch.tensor(NAN)}
    expected = "train/loss_kd is nan at iteration 12; loss terms: loss_rec=0.03, loss_kd=nan, loss=nan"
    with pytest.raises(NonFiniteError, match=f"^{re.escape(expected)}$"):
        check_terms(terms, iteration=12)
    with pytest.raises(FloatingPointError, match=r"^train/loss is inf; loss terms: loss_rec=1, loss=inf$"):
        check_terms({"loss_rec": torch.tensor(1.0), "loss": torch.tensor(INF)})
    check_terms({"loss": torch.tensor(2.0, requires_grad=True) * 2})


def test_check_grads_names_the_first_bad_parameter() -> None:
    params = [torch.zeros(2), torch.zeros(3), torch.zeros(1)]
    names = {id(p): n for p, n in zip(params, ["student.a", "student.b", "distiller.adapters.f1.weight"])}
    grads = [torch.ones(2), torch.tensor([0.0, INF, 1.0]), torch.tensor([NAN])]
    expected = "the gradient of student.b is not finite (inf) at iteration 3; no optimizer step was taken"
    with pytest.raises(NonFiniteError, match=f"^{re.escape(expected)}$"):
        check_grads(params, grads, lambda p: names[id(p)], iteration=3)
    check_grads(
        params, [torch.ones(2), torch.ones(3), torch.ones(1)], lambda p: 1 / 0
    )  # names only on failure


def test_finite_or_none_makes_strict_json():
    value = {"a": float("nan"), "b": [1.5, float("inf"), (float("-inf"), 2)], "c": "x", "d": 3}
    assert finite_or_none(value) == {"a": None, "b": [1.5, None, [None, 2]], "c": "x", "d": 3}
    json.dumps(finite_or_none(value), allow_nan=False)
