"""Training data as LightningDataModules: tensors in memory, batches drawn by a seeded sampler.

Every data set here is small enough to live in memory as two tensors ``x`` (N, in) and ``y`` (N, out).
Batches are gathered by tensor indexing (``__getitems__``), not by collating N single samples, and
one Lightning epoch covers the whole run (``steps`` batches, reshuffled every pass over the data),
so a one-example data set costs no per-epoch overhead at every step.
"""

from __future__ import annotations

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


class RepeatSampler(Sampler[int]):
    """``num_samples`` indices from consecutive passes over range(n), each pass shuffled by ``seed``."""

    def __init__(self, n: int, num_samples: int, seed: int, shuffle: bool = True):
        self.n, self.num_samples, self.seed, self.shuffle = n, num_samples, seed, shuffle

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(self.seed)
        left = self.num_samples
        while left > 0:
            order = torch.randperm(self.n, generator=gen) if self.shuffle else torch.arange(self.n)
            chunk = order[:left].tolist()
            left -= len(chunk)
            yield from chunk


class TensorDataModule(L.LightningDataModule):
    """Base for in-memory data: subclasses implement :meth:`make_tensors`.

    ``steps`` (the trainer's max_steps) batches of ``batch_size`` make up the run's one epoch.
    """

    def __init__(self, batch_size: int = 1, steps: int = 1, seed: int = 0, shuffle: bool = True):
        super().__init__()
        self.batch_size, self.steps, self.seed, self.shuffle = batch_size, steps, seed, shuffle
        self.train_set: TensorPairDataset | None = None

    def make_tensors(self) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set = TensorPairDataset(*self.make_tensors())

    def train_dataloader(self) -> DataLoader:
        self.setup()
        sampler = RepeatSampler(len(self.train_set), self.steps * self.batch_size, self.seed, self.shuffle)
        return DataLoader(self.train_set, batch_size=self.batch_size, sampler=sampler, collate_fn=_keep_batch)


class ExampleDataModule(TensorDataModule):
    """The post's single training example (x, y), as a batch of one at every step."""

    def __init__(self, x: float, y: float, steps: int = 1, seed: int = 0):
        super().__init__(batch_size=1, steps=steps, seed=seed, shuffle=False)
        self.x, self.y = float(x), float(y)

    def make_tensors(self) -> tuple[Tensor, Tensor]:
        return torch.tensor([[self.x]]), torch.tensor([[self.y]])
