"""backprop_lab.data: the data sets, their probe sets, the per-epoch order and each DDP rank's share."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch import Callback

from backprop_lab.data import (
    EpochSampler,
    ExampleDataModule,
    MoonsDataModule,
    RankShare,
    SineDataModule,
    TensorPairDataset,
)

from conftest import built_run, compose_config

# --- generated data ------------------------------------------------------------------------------


def test_sine_data_shapes_probe_and_noise():
    data = SineDataModule(n_samples=10, n_probe=5, noise=0.0, batch_size=4, seed=1)
    data.setup()
    x, y = data.train_set.x, data.train_set.y
    assert x.shape == (10, 1) and y.shape == (10, 1)
    assert x.abs().max().item() <= math.pi
    torch.testing.assert_close(y, torch.sin(x))  # noise 0: the clean curve
    assert data.probe_x.squeeze(1).tolist() == pytest.approx(
        [-math.pi, -math.pi / 2, 0.0, math.pi / 2, math.pi], abs=1e-6
    )
    assert data.probe_y.squeeze(1).tolist() == pytest.approx([0.0, -1.0, 0.0, 1.0, 0.0], abs=1e-6)
    assert (data.task, data.in_features, data.out_features) == ("regression", 1, 1)
    noisy = SineDataModule(n_samples=10, n_probe=5, noise=0.1, batch_size=4, seed=1)
    noisy.setup()
    assert 0 < (noisy.train_set.y - torch.sin(noisy.train_set.x)).abs().max().item() < 0.5


def test_moons_lie_on_their_half_circles_without_noise():
    data = MoonsDataModule(n_samples=9, n_probe=6, noise=0.0, batch_size=3, seed=0)
    data.setup()
    x, y = data.train_set.x + torch.tensor([0.5, 0.25]), data.train_set.y
    assert x.shape == (9, 2) and y.shape == (9, 1)
    assert y.squeeze(1).tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1]  # 9 // 2 = 4 of class 1
    outer, inner = x[:5], x[5:]
    torch.testing.assert_close(outer.norm(dim=1), torch.ones(5))
    assert (outer[:, 1] >= 0).all()
    torch.testing.assert_close((inner - torch.tensor([1.0, 0.5])).norm(dim=1), torch.ones(4))
    assert (inner[:, 1] <= 0.5).all()
    assert data.probe_x.shape == (6, 2) and data.probe_y.sum().item() == 3
    assert (data.task, data.in_features, data.out_features) == ("classification", 2, 1)


def test_probe_set_is_held_out_and_fixed_by_the_seed():
    def made(seed):
        data = MoonsDataModule(n_samples=50, n_probe=20, noise=0.1, batch_size=10, seed=seed)
        data.setup()
        return data

    a, b, c = made(0), made(0), made(1)
    assert torch.equal(a.train_set.x, b.train_set.x) and torch.equal(a.probe_x, b.probe_x)
    assert not torch.equal(a.train_set.x, c.train_set.x)
    # no probe point is a training point
    assert torch.cdist(a.probe_x, a.train_set.x).min().item() > 0


def test_example_data_has_the_one_example_as_probe():
    data = ExampleDataModule(x=1.0, y=0.5, seed=0)
    data.setup()
    assert data.probe_x.tolist() == [[1.0]] and data.probe_y.tolist() == [[0.5]]
    assert (data.task, data.in_features, data.out_features) == ("regression", 1, 1)


# --- batches and epochs ------------------------------------------------------------------------------


def test_a_list_of_indices_is_gathered_in_one_batch():
    data = TensorPairDataset(torch.arange(6.0).unsqueeze(1), 10 * torch.arange(6.0).unsqueeze(1))
    x, y = data.__getitems__([4, 0, 2])
    assert x.tolist() == [[4.0], [0.0], [2.0]] and y.tolist() == [[40.0], [0.0], [20.0]]
    with pytest.raises(ValueError, match="x and y differ in length: 3 vs 2"):
        TensorPairDataset(torch.zeros(3, 1), torch.zeros(2, 1))


def test_an_epoch_is_one_pass_over_the_data_in_batches_with_a_smaller_last_one():
    data = SineDataModule(n_samples=20, n_probe=4, noise=0.1, batch_size=8, seed=0)
    batches = [x for x, _ in data.train_dataloader()]
    assert [len(x) for x in batches] == [8, 8, 4]
    seen = torch.cat(batches).squeeze(1)
    assert sorted(seen.tolist()) == sorted(data.train_set.x.squeeze(1).tolist())  # each sample once


def test_each_epoch_has_its_own_order_and_the_same_epoch_always_the_same():
    def order(seed, epoch):
        sampler = EpochSampler(20, seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert sorted(order(0, 0)) == list(range(20))  # a permutation: one pass over the data
    assert order(0, 0) == order(0, 0) and order(0, 3) == order(0, 3)
    assert order(0, 0) != order(0, 1)  # 20! orders: two epochs agree with probability ~4e-19
    assert order(0, 1) != order(1, 1)
    assert list(EpochSampler(5, seed=0, shuffle=False)) == [0, 1, 2, 3, 4]


class _Batches(Callback):
    def __init__(self):
        self.x: list[list[float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.x.append(batch[0].squeeze(1).tolist())


def _trained_batches(tmp_path, steps):
    overrides = ("model=mlp", "data.n_samples=8", "data.batch_size=8", "monitor.pictures=[]", "logger=csv")
    module, data, trainer = built_run(tmp_path, *overrides, f"trainer.max_steps={steps}")
    batches = _Batches()
    trainer.callbacks.append(batches)
    trainer.fit(module, datamodule=data)
    return batches.x


def test_lightning_sets_the_epoch_of_the_sampler_so_every_epoch_is_reshuffled(tmp_path):
    # One batch of all 8 samples per epoch: three steps are three epochs, each the same set in its own order.
    a = _trained_batches(tmp_path / "a", 3)
    assert len(a) == 3 and sorted(a[0]) == sorted(a[1]) == sorted(a[2])
    assert a[0] != a[1] and a[1] != a[2]
    assert _trained_batches(tmp_path / "b", 3) == a  # and a run of the same seed sees the same batches


# --- DDP: each rank's share of the global batch ---------------------------------------------------------


def test_each_rank_takes_its_share_of_every_global_batch():
    order = list(EpochSampler(8, seed=0))  # one pass = two global batches of 4
    shares = [list(RankShare(EpochSampler(8, seed=0), 4, rank, 2)) for rank in (0, 1)]
    assert shares[0] == order[0:2] + order[4:6]
    assert shares[1] == order[2:4] + order[6:8]


def test_under_ddp_a_rank_loads_half_of_each_global_batch_and_the_post_example_stays_whole():
    moons = instantiate(compose_config("model=mlp", "data=moons", "data.batch_size=32").data, seed=0)
    single = [x for x, _ in moons.train_dataloader()]
    moons.trainer = SimpleNamespace(world_size=2, global_rank=1)
    shares = [x for x, _ in moons.train_dataloader()]
    assert [len(x) for x in shares] == [16] * 8  # an epoch: 256 moons in global batches of 32
    assert all(torch.equal(s, b[16:]) for s, b in zip(shares, single))  # rank 1: the second half

    example = instantiate(compose_config("model=sigmoid").data, seed=0)
    example.trainer = SimpleNamespace(world_size=2, global_rank=1)
    assert [x.tolist() for x, _ in example.train_dataloader()] == [[[1.0]]]  # an epoch: the one example


@pytest.mark.parametrize("n, batch, world", [(8, 4, 2), (100, 32, 2), (52, 8, 4), (90, 24, 2), (96, 32, 4), (10, 4, 2)])
def test_every_rank_runs_the_same_batches_and_together_they_are_the_global_ones(n, batch, world):
    """The epoch's last, smaller batch split too: rank k's i-th batch is its 1/world of the i-th global batch (in
    order), every rank runs as many batches as one process, each of one size across the ranks, and the loader's
    length says so (DDP pairs the ranks' batches one by one: a rank with a batch more would wait, or pair across
    epochs)."""
    from torch.utils.data import BatchSampler

    order = list(EpochSampler(n, seed=3))
    globals_ = [order[i : i + batch] for i in range(0, n, batch)]
    per_rank = [
        list(BatchSampler(RankShare(EpochSampler(n, seed=3), batch, rank, world), batch // world, drop_last=False))
        for rank in range(world)
    ]
    for rank, batches in enumerate(per_rank):
        assert (
            len(batches)
            == len(globals_)
            == math.ceil(len(RankShare(EpochSampler(n, 3), batch, rank, world)) / (batch // world))
        )
        for mine, whole in zip(batches, globals_):
            k = len(whole) // world
            assert mine == whole[rank * k : (rank + 1) * k]


def test_a_last_batch_that_does_not_split_over_the_ranks_is_refused():
    with pytest.raises(ValueError, match="do not split evenly over 2 processes"):
        RankShare(EpochSampler(97, seed=0), 32, 0, 2)
