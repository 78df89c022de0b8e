"""Under DDP every rank takes the same KRNet-skip decision: it is made on the all-reduced meta-gradient."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from meta_kd_sr.meta.health import MetaHealth
from meta_kd_sr.meta.iteration import _krnet_step
from meta_kd_sr.meta.step import MetaResult

NAN = float("nan")
CASES = {  # what rank 1 contributes; rank 0's values are always finite
    "finite": (1.0, 0.5),
    "nan_gradient": (NAN, 0.5),
    "nan_meta_loss": (1.0, NAN),
}


def _worker(rank: int, store: str, out: str) -> None:
    """Every case on this rank: a KRNet, its Adam, one ``_krnet_step`` with this rank's meta-gradient."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    results = {}
    try:
        for case, rank1 in CASES.items():
            torch.manual_seed(0)  # the same KRNet on both ranks
            krnet = nn.Linear(3, 2)
            params = list(krnet.parameters())
            opt = torch.optim.Adam(params, lr=0.1)
            before = copy.deepcopy(krnet.state_dict())
            scale, meta_loss = rank1 if rank == 1 else (2.0, 0.25)
            result = MetaResult(
                torch.tensor(meta_loss), [torch.full_like(p, scale) for p in params], None, []
            )
            health = MetaHealth(window=2)
            step = _krnet_step(params, result, opt, health)
            after = {"krnet": krnet.state_dict(), "adam": opt.state_dict()["state"]}
            after |= {"drift": step.logs.get("train/krnet_drift"), "health": health.state_dict()}
            results[case] = {"skip": float(step.skipped), "before": before, **after}
    finally:
        dist.destroy_process_group()
    torch.save(results, out)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    """What each of two gloo ranks (spawned processes) saw, by case."""
    tmp = tmp_path_factory.mktemp("ddp_nonfinite")
    outs = [tmp / f"rank{r}.pt" for r in range(2)]
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(r, str(tmp / "store"), str(outs[r]))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()  # no timeout: the ranks finish or fail, whatever the machine's load
    assert [p.exitcode for p in procs] == [0, 0]
    return [torch.load(o, weights_only=False) for o in outs]


@pytest.mark.parametrize("case", list(CASES))
def test_all_ranks_skip_or_step_together(ranks, case) -> None:
    rank0, rank1 = (r[case] for r in ranks)
    skip = case != "finite"
    assert rank0["skip"] == rank1["skip"] == float(skip)
    for key, value in rank0["krnet"].items():
        assert torch.equal(value, rank1["krnet"][key])  # identical KRNets on both ranks
        assert torch.equal(value, rank0["before"][key]) == skip  # untouched exactly when skipped
    assert (rank0["adam"] == {}) == skip  # a skipped step leaves the KRNet Adam without state
    # the meta signal statistics see the averaged gradient: the same on both ranks, untouched by a skip
    assert (rank0["drift"] is None) == skip and rank0["health"]["steps"] == rank1["health"]["steps"] == int(
        not skip
    )
    if not skip:
        assert torch.equal(rank0["drift"], rank1["drift"]) and rank0["drift"] > 0
        assert torch.equal(rank0["health"]["mean"], rank1["health"]["mean"])
