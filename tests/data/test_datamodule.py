from __future__ import annotations

from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch

from meta_kd_sr.data.datamodule import SRDataModule
from meta_kd_sr.data.datasets import DIV2K
from meta_kd_sr.data.embedded import EmbeddedPhotos
from meta_kd_sr.data.samplers import ShardedEvalSampler, TrainSampler


def _train(root, first=1, last=3, n=12, **kw):
    return DIV2K(root, 4, index_range=(first, last), patch_size=16, samples_per_epoch=n, cache="memory", **kw)


def _module(root, world=1, rank=0, **kw):
    kw.setdefault("batch_size", 4)
    dm = SRDataModule(
        train=lambda: _train(root),
        meta=lambda: _train(root, 4, 5, n=8),
        val=lambda: DIV2K(root, 4, index_range=(1, 5), train=False, cache="memory"),
        **kw,
    )
    dm.trainer = SimpleNamespace(world_size=world, global_rank=rank) if world > 1 else None
    dm.prepare_data()
    dm.setup("fit")
    return dm


def _first_batch(loader):
    return next(iter(loader))


def test_per_device_batch_size_global_and_local():
    dm = SRDataModule(train=[0], batch_size=16)
    assert dm.per_device_batch_size == 16
    dm.trainer = SimpleNamespace(world_size=4, global_rank=1)
    assert dm.per_device_batch_size == 4
    assert SRDataModule(train=[0], batch_size=16, batch_size_is_global=False).per_device_batch_size == 16
    dm.trainer = SimpleNamespace(world_size=3, global_rank=0)
    with pytest.raises(ValueError, match="global batch_size 16 is not divisible by the world size 3"):
        _ = dm.per_device_batch_size


def test_constructor_validation():
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        SRDataModule(train=[0], batch_size=0)
    with pytest.raises(ValueError, match="needs a train dataset"):
        SRDataModule(train=None)
    with pytest.raises(ValueError, match="train must be a Dataset or a zero-argument factory, got int"):
        SRDataModule(train=3).dataset("train")


def test_factories_are_built_once_and_prepare_data_generates_files(div2k_root):
    calls = []

    def factory():
        calls.append(1)
        return _train(div2k_root)

    dm = SRDataModule(train=factory, batch_size=4)
    assert calls == []  # nothing built at construction (Hydra partials)
    dm.prepare_data()
    assert len(list((div2k_root / "DIV2K_train_LR_bicubic" / "X4").glob("*.png"))) == 3
    dm.setup("fit")
    assert calls == [1] and dm.dataset("train") is dm.dataset("train")


def test_train_dataloader_returns_train_and_meta(div2k_root):
    dm = _module(div2k_root)
    loaders = dm.train_dataloader()
    assert set(loaders) == {"train", "meta"}
    assert isinstance(loaders["train"].sampler, TrainSampler) and loaders["train"].drop_last
    batch = _first_batch(loaders["train"])
    assert batch["lq"].shape == (4, 3, 4, 4) and batch["gt"].shape == (4, 3, 16, 16)
    assert set(_first_batch(loaders["meta"])["name"]) <= {"0004", "0005"}
    assert set(batch["name"]) <= {"0001", "0002", "0003"}


def test_meta_overlapping_train_is_refused(div2k_root):
    dm = SRDataModule(train=_train(div2k_root, 1, 4), meta=_train(div2k_root, 3, 5), batch_size=4)
    with pytest.raises(ValueError, match="meta images must be disjoint .*both contain: 0003, 0004"):
        dm.setup("fit")


def test_ranks_draw_different_batches_and_seeds_reproduce(div2k_root):
    rank0 = _first_batch(_module(div2k_root, world=2, rank=0, seed=3).train_dataloader()["train"])
    rank1 = _first_batch(_module(div2k_root, world=2, rank=1, seed=3).train_dataloader()["train"])
    again = _first_batch(_module(div2k_root, world=2, rank=0, seed=3).train_dataloader()["train"])
    other = _first_batch(_module(div2k_root, world=2, rank=0, seed=4).train_dataloader()["train"])
    assert rank0["gt"].shape == (2, 3, 16, 16)  # global batch 4 over 2 ranks
    assert not torch.equal(rank0["gt"], rank1["gt"])
    assert torch.equal(rank0["gt"], again["gt"]) and torch.equal(rank0["lq"], again["lq"])
    assert not torch.equal(rank0["gt"], other["gt"])


def test_two_ranks_see_the_single_process_global_batch(div2k_root):
    single = _first_batch(_module(div2k_root, batch_size=4).train_dataloader()["train"])
    ranks = [_first_batch(_module(div2k_root, world=2, rank=r).train_dataloader()["train"]) for r in (0, 1)]
    key = lambda t: t.flatten(1).sum(1).tolist()  # noqa: E731
    assert sorted(key(single["gt"])) == sorted(key(ranks[0]["gt"]) + key(ranks[1]["gt"]))


def test_workers_do_not_change_the_data(div2k_root):
    plain = _first_batch(_module(div2k_root, num_workers=0).train_dataloader()["train"])
    workers = _first_batch(_module(div2k_root, num_workers=2).train_dataloader()["train"])
    assert torch.equal(plain["gt"], workers["gt"]) and plain["name"] == workers["name"]


def test_val_loader_is_an_unpadded_shard_of_full_images(div2k_root):
    loader = _module(div2k_root, world=2, rank=1).val_dataloader()
    assert isinstance(loader.sampler, ShardedEvalSampler) and loader.batch_size == 1
    assert [b["name"][0] for b in loader] == ["0002", "0004"]
    assert SRDataModule(train=[0]).val_dataloader() == []


def test_too_few_samples_for_a_batch(div2k_root):
    dm = SRDataModule(train=_train(div2k_root, n=3), batch_size=4)
    with pytest.raises(ValueError, match="train has 3 samples: fewer than one batch of 4 per rank"):
        dm.train_dataloader()


class _Recorder(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.train_batches, self.val_names = [], []

    def training_step(self, batch, batch_idx):
        self.train_batches.append(
            (self.current_epoch, batch["train"]["gt"].clone(), list(batch["meta"]["name"]))
        )
        return (self.weight * batch["train"]["lq"].mean()).sum()

    def validation_step(self, batch, batch_idx):
        self.val_names.extend(batch["name"])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_fit_combines_loaders_and_sets_epochs(div2k_root):
    dm = SRDataModule(
        train=lambda: _train(div2k_root),
        meta=lambda: EmbeddedPhotos(["colorwheel"], 4, train=True, patch_size=16, samples_per_epoch=8),
        val=lambda: DIV2K(div2k_root, 4, index_range=(1, 5), train=False, cache="memory"),
        batch_size=4,
    )
    model = _Recorder()
    trainer = pl.Trainer(
        max_epochs=2,
        limit_train_batches=2,
        accelerator="cpu",
        devices=1,
        use_distributed_sampler=False,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=dm)
    assert [e for e, _, _ in model.train_batches] == [0, 0, 1, 1]
    assert model.train_batches[0][2] == ["colorwheel"] * 4
    assert not torch.equal(
        model.train_batches[0][1], model.train_batches[2][1]
    )  # set_epoch reached the sampler
    assert model.val_names == ["0001", "0002", "0003", "0004", "0005"] * 2  # each epoch, every image once


def test_meta_batch_size_sets_the_meta_loader_only(div2k_root):
    loaders = _module(div2k_root, meta_batch_size=8).train_dataloader()
    assert _first_batch(loaders["meta"])["gt"].shape[0] == 8
    assert _first_batch(loaders["train"])["gt"].shape[0] == 4
    ranks = _module(div2k_root, world=2, rank=1, meta_batch_size=8).train_dataloader()
    assert _first_batch(ranks["meta"])["gt"].shape[0] == 4  # global, like batch_size
    assert _first_batch(_module(div2k_root).train_dataloader()["meta"])["gt"].shape[0] == 4  # default
    with pytest.raises(ValueError, match="meta_batch_size must be >= 1, got 0"):
        SRDataModule(train=[0], meta_batch_size=0)
    dm = SRDataModule(train=[0], meta_batch_size=6)
    dm.trainer = SimpleNamespace(world_size=4, global_rank=0)
    with pytest.raises(ValueError, match="global meta_batch_size 6 is not divisible by the world size 4"):
        _ = dm.per_device_meta_batch_size
