"""Deterministic, resumable sample streams: which sample each rank loads next, and the seed of its augmentation.

Training is an endless stream of global positions p = 0, 1, 2, ...: epoch e = p // N visits the dataset in a
permutation seeded by (seed, e), position p belongs to rank p % world_size, and its augmentation seed is derived from
(seed, e, p % N). So the global batch of a step is the same on 1 or 8 GPUs, and resuming at step s only needs the
position s * global_batch: no sampler state to save beyond that number.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
from torch.utils.data import Sampler


class SampleKey(NamedTuple):
    """What a dataset's ``__getitem__`` receives: the sample, its augmentation seed (None: no augmentation) and
    whether it counts (False for the padding that evens out evaluation shards across ranks)."""

    index: int
    seed: int | None = None
    valid: bool = True


def sample_seed(seed: int, epoch: int, offset: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, offset]).generate_state(1)[0])


class TrainSampler(Sampler[SampleKey]):
    """Endless stream of ``SampleKey`` for one rank, starting at global position ``start``."""

    def __init__(self, num_samples: int, seed: int = 0, rank: int = 0, world_size: int = 1, start: int = 0,
                 shuffle: bool = True, augment: bool = True):
        if num_samples <= 0:
            raise ValueError("the training set is empty")
        self.n, self.seed, self.rank, self.world = num_samples, seed, rank, world_size
        self.start, self.shuffle, self.augment = start, shuffle, augment

    def order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.n)
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def __iter__(self) -> Iterator[SampleKey]:
        p = self.start + (self.rank - self.start) % self.world  # first position of this rank at or after start
        epoch, perm = -1, None
        while True:
            e, i = divmod(p, self.n)
            if e != epoch:
                epoch, perm = e, self.order(e)
            yield SampleKey(int(perm[i]), sample_seed(self.seed, e, i) if self.augment else None)
            p += self.world


class EvalSampler(Sampler[SampleKey]):
    """Rank r evaluates samples r, r + world, ...; shards are padded to equal length (padding has valid=False),
    because sharded models need every rank to run the same number of forward passes."""

    def __init__(self, num_samples: int, rank: int = 0, world_size: int = 1):
        self.n, self.rank, self.world = num_samples, rank, world_size

    def __len__(self) -> int:
        return -(-self.n // self.world)

    def __iter__(self) -> Iterator[SampleKey]:
        for j in range(len(self)):
            i = self.rank + j * self.world
            yield SampleKey(i, None, True) if i < self.n else SampleKey(self.n - 1, None, False)
