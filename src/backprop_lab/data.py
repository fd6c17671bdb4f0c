"""Training data as LightningDataModules: tensors in memory, batches drawn by a seeded sampler.

Every data set here is small enough to live in memory as two tensors ``x`` (N, in) and ``y`` (N, out).
Batches are gathered by tensor indexing (``__getitems__``), not by collating N single samples. An epoch
is one pass over the training set, in an order drawn from ``seed`` and the epoch's number, so a run
(and a resumed run) sees the same batches whatever else it does.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler


class TensorPairDataset(Dataset):
    """(x[i], y[i]) pairs; a list of indices is gathered in one indexing op."""

    def __init__(self, x: Tensor, y: Tensor):
        if len(x) != len(y):
            raise ValueError(f"x and y differ in length: {len(x)} vs {len(y)}")
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.x[i], self.y[i]

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        idx = torch.as_tensor(indices)
        return self.x[idx], self.y[idx]


def _keep_batch(batch):
    # __getitems__ already returns the batch; DataLoader's default collate would re-stack it.
    return batch


class EpochSampler(Sampler[int]):
    """One pass over range(n): shuffled from ``(seed, epoch)`` where ``shuffle``, in order otherwise.

    Lightning calls :meth:`set_epoch` before every epoch (as for a DistributedSampler), so each epoch
    has its own order and the same epoch always has the same one. :attr:`resume_at` ``(epoch, k)`` leaves
    out the first k indices of that epoch: the ones a resumed run had already trained on.
    """

    def __init__(self, n: int, seed: int, shuffle: bool = True):
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0
        self.resume_at: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        order = list(range(self.n))
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=gen).tolist()
        if self.resume_at is not None and self.resume_at[0] == self.epoch:
            order = order[self.resume_at[1] :]
        return iter(order)


class ResumableLoader(DataLoader):
    """A DataLoader that Lightning resumes mid-epoch, through its ``state_dict``/``load_state_dict``
    interface for data loaders: the state is where training stands in the fixed order of
    :class:`EpochSampler` (its epoch, and the batches of it already trained on), read from the trainer."""

    def __init__(self, *args, epoch_sampler: EpochSampler, global_batch: int, position, **kwargs):
        super().__init__(*args, **kwargs)
        self.epoch_sampler, self.global_batch, self.position = epoch_sampler, global_batch, position

    def state_dict(self) -> dict[str, int]:
        epoch, batches = self.position()  # the epoch, and its batches trained on so far
        if batches >= len(self):  # saved at the epoch's last batch: the next run starts the next epoch
            epoch, batches = epoch + 1, 0
        return {"epoch": epoch, "batches": batches}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.epoch_sampler.resume_at = (state_dict["epoch"], state_dict["batches"] * self.global_batch)


class RankShare(Sampler[int]):
    """Rank ``rank``'s share of each global batch of ``sampler``: every rank draws the same global order
    (same seed) and takes its ``batch_size / world`` consecutive indices of each batch of ``batch_size``, and
    its ``1 / world`` of the epoch's last, smaller batch, so every rank runs the same batches, each of one size
    across the ranks, and DDP's averaged gradient is the gradient of the global batch, as in one process.
    Both sizes must split evenly (``backprop_lab.config.check_batch_split`` refuses the others)."""

    def __init__(self, sampler: EpochSampler, batch_size: int, rank: int, world: int):
        n = len(sampler)
        if batch_size % world or (n % batch_size) % world:
            raise ValueError(
                f"batches of {batch_size} of {n} samples (the last of {n % batch_size or batch_size}) do not split "
                f"evenly over {world} processes"
            )
        self.sampler, self.batch_size, self.rank, self.world = sampler, batch_size, rank, world

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler) // self.world

    def __iter__(self) -> Iterator[int]:
        n = len(self.sampler)
        whole = n - n % self.batch_size  # the positions in full global batches; the last, smaller batch after
        share, last_share = self.batch_size // self.world, (n - whole) // self.world
        lo, hi = self.rank * share, (self.rank + 1) * share
        last_lo, last_hi = whole + self.rank * last_share, whole + (self.rank + 1) * last_share
        for i, index in enumerate(self.sampler):
            if (lo <= i % self.batch_size < hi) if i < whole else (last_lo <= i < last_hi):
                yield index


class TensorDataModule(L.LightningDataModule):
    """Base for in-memory data: subclasses implement :meth:`make_tensors`.

    An epoch is one pass over the training set in batches of ``batch_size`` (the last one smaller
    where ``batch_size`` does not divide it). After :meth:`setup`: ``probe_x``, ``probe_y`` (a fixed set the monitors evaluate, from
    :meth:`make_probe`), ``in_features``, ``out_features``, and the class's ``task``.
    """

    task = "regression"  # or "classification"; decides the loss (backprop_lab.train)

    def __init__(self, batch_size: int, seed: int, shuffle: bool = True):
        super().__init__()
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.train_set: TensorPairDataset | None = None
        self.probe_x: Tensor | None = None
        self.probe_y: Tensor | None = None

    def make_tensors(self) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def make_probe(self) -> tuple[Tensor, Tensor]:
        """The held-out probe set; by default the training data itself (the post's one example)."""
        return self.train_set.x, self.train_set.y

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set = TensorPairDataset(*self.make_tensors())
            self.probe_x, self.probe_y = self.make_probe()

    @property
    def in_features(self) -> int:
        self.setup()
        return self.train_set.x.shape[-1]

    @property
    def out_features(self) -> int:
        self.setup()
        return self.train_set.y.shape[-1]

    # Under DDP each rank takes its share of every global batch (see RankShare); a data set whose
    # global batch cannot be split (the post's one example) gives every rank the whole batch instead.
    replicate_across_ranks = False

    def train_dataloader(self) -> DataLoader:
        self.setup()
        sampler = EpochSampler(len(self.train_set), self.seed, self.shuffle)
        world, rank = self._ranks()
        resumable = {"epoch_sampler": sampler, "global_batch": self.batch_size, "position": self._position}
        if world == 1 or self.replicate_across_ranks:
            return ResumableLoader(
                self.train_set, batch_size=self.batch_size, sampler=sampler, collate_fn=_keep_batch, **resumable
            )
        share = RankShare(sampler, self.batch_size, rank, world)  # refuses batches that do not split evenly
        return ResumableLoader(
            self.train_set, batch_size=self.batch_size // world, sampler=share, collate_fn=_keep_batch, **resumable
        )

    def _ranks(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def _position(self) -> tuple[int, int]:
        """Where training stands: the epoch, and the batches of it trained on (every micro-batch counted,
        also the last, partial update of an epoch under ``accumulate_grad_batches``). Read from the fit
        loop's batch progress, which counts the batch in progress from the end of its training step on."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 0
        return trainer.current_epoch, trainer.fit_loop.epoch_loop.batch_progress.current.processed


class ExampleDataModule(TensorDataModule):
    """The post's single training example (x, y), as a batch of one at every step (on every DDP rank)."""

    replicate_across_ranks = True  # one example cannot be split; the mean of equal gradients is the same

    def __init__(self, x: float, y: float, seed: int = 0):
        super().__init__(batch_size=1, seed=seed, shuffle=False)
        self.x, self.y = float(x), float(y)

    def make_tensors(self) -> tuple[Tensor, Tensor]:
        return torch.tensor([[self.x]]), torch.tensor([[self.y]])


# --- data sets generated in code (no downloads) ----------------------------------------------------


class GeneratedDataModule(TensorDataModule):
    """A data set drawn from ``seed``: ``n_samples`` training pairs, then ``n_probe`` held-out ones.

    Subclasses implement :meth:`sample`. One generator draws the training set first and the probe set
    after it, so the probe set never overlaps the training set and is the same in every run of a seed.
    """

    def __init__(self, n_samples: int, n_probe: int, noise: float, batch_size: int, seed: int = 0):
        super().__init__(batch_size=batch_size, seed=seed, shuffle=True)
        self.n_samples, self.n_probe, self.noise = n_samples, n_probe, float(noise)
        self._probe: tuple[Tensor, Tensor] | None = None

    def sample(self, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def make_tensors(self) -> tuple[Tensor, Tensor]:
        gen = torch.Generator().manual_seed(self.seed)
        train = self.sample(self.n_samples, gen)
        self._probe = self.sample(self.n_probe, gen)
        return train

    def make_probe(self) -> tuple[Tensor, Tensor]:
        return self._probe


class SineDataModule(GeneratedDataModule):
    """1-D regression: x ~ U(−π, π), y = sin(x) + noise·ε with ε ~ N(0, 1); shapes (N, 1).

    The probe set is ``n_probe`` evenly spaced x over [−π, π] with the noiseless y = sin(x): the
    function the network should learn, in order, ready to be drawn as a curve.
    """

    def sample(self, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        x = (torch.rand(n, 1, generator=gen) * 2 - 1) * math.pi
        y = torch.sin(x) + self.noise * torch.randn(n, 1, generator=gen)
        return x, y

    def make_probe(self) -> tuple[Tensor, Tensor]:
        x = torch.linspace(-math.pi, math.pi, self.n_probe).unsqueeze(1)
        return x, torch.sin(x)


class MoonsDataModule(GeneratedDataModule):
    """2-D binary classification: two interleaving half circles ("two moons"), labels y ∈ {0, 1}.

    Class 0 lies on (cos t, sin t), class 1 on (1 − cos t, 1/2 − sin t), t ~ U(0, π), each point
    moved by noise·ε with ε ~ N(0, I), the whole set shifted by (−1/2, −1/4) so it is centred at 0.
    Half of the points (rounded down) are class 1. Shapes: x (N, 2), y (N, 1).
    """

    task = "classification"

    def sample(self, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        y = (torch.arange(n) >= n - n // 2).to(torch.float32).unsqueeze(1)
        t = torch.rand(n, 1, generator=gen) * math.pi
        outer = torch.cat([torch.cos(t), torch.sin(t)], dim=1)
        inner = torch.cat([1 - torch.cos(t), 0.5 - torch.sin(t)], dim=1)
        x = torch.where(y.bool(), inner, outer) + self.noise * torch.randn(n, 2, generator=gen)
        return x - torch.tensor([0.5, 0.25]), y
