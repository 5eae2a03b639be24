"""Two-stream batch sampler: every batch = `labeled_bs` labeled + (batch_size - labeled_bs) unlabeled slices.

Labeled indices cycle once per epoch (a fresh permutation each epoch), unlabeled ones forever. Batch k is a
pure function of (seed, k): resuming at iteration k, or running N processes, needs no sampler state. With
`world_size` > 1, iteration k draws world_size times as many indices and rank r takes its own contiguous
share of each stream, so every rank keeps the labeled/unlabeled mix and no index repeats across ranks in a
step (with several ranks the unlabeled stream, too, starts a new permutation only between steps; a single
process reads it as one endless stream). Each element is (dataset index, augmentation seed); the seed
(seed, "augmentation", k, slot), a key of random_streams, makes augmentation independent of worker scheduling.
"""
from functools import lru_cache

import numpy as np

from dataloaders.dataset import DataError
from dataloaders.random_streams import stream_rng


class TwoStreamBatchSampler:
    def __init__(self, labeled, unlabeled, batch_size, labeled_bs, seed=1337, start=0, total=None,
                 rank=0, world_size=1):
        self.labeled, self.unlabeled = np.asarray(labeled), np.asarray(unlabeled)
        self.labeled_bs, self.unlabeled_bs = labeled_bs, batch_size - labeled_bs
        self.seed, self.start, self.total = seed, start, total
        self.rank, self.world = rank, world_size
        n_lab = labeled_bs * world_size
        if len(self.labeled) < n_lab:
            raise DataError(f"{len(self.labeled)} labeled slices cannot fill {n_lab} labeled places per step; "
                             f"lower --labeled_bs or raise --labelnum")
        if self.unlabeled_bs > 0 and len(self.unlabeled) < (1 if world_size == 1 else self.unlabeled_bs * world_size):
            raise DataError(f"{len(self.unlabeled)} unlabeled slices cannot fill the unlabeled part of the batch on "
                             f"{world_size} process(es); lower --labelnum or --batch_size")
        self.steps_per_epoch = len(self.labeled) // n_lab
        self._perm = lru_cache(maxsize=4)(self._permutation)

    def _permutation(self, stream, epoch):
        pool = self.labeled if stream == 0 else self.unlabeled
        return stream_rng(self.seed, "sampler", stream, epoch).permutation(pool)

    def batch(self, k):
        """The (index, aug_seed) pairs of this rank at iteration k: labeled first, then unlabeled."""
        out = []
        n = self.labeled_bs * self.world
        perm = self._perm(0, k // self.steps_per_epoch)
        pos0 = (k % self.steps_per_epoch) * n + self.rank * self.labeled_bs
        out += [int(perm[pos0 + j]) for j in range(self.labeled_bs)]
        m = len(self.unlabeled)
        if self.world == 1:
            base = k * self.unlabeled_bs
            for j in range(self.unlabeled_bs):
                out.append(int(self._perm(1, (base + j) // m)[(base + j) % m]))
        elif self.unlabeled_bs:
            n_u = self.unlabeled_bs * self.world
            per_epoch = m // n_u
            perm = self._perm(1, k // per_epoch)
            pos0 = (k % per_epoch) * n_u + self.rank * self.unlabeled_bs
            out += [int(perm[pos0 + j]) for j in range(self.unlabeled_bs)]
        slot0 = self.rank * (self.labeled_bs + self.unlabeled_bs)
        return [(idx, (self.seed, "augmentation", k, slot0 + s)) for s, idx in enumerate(out)]

    def __iter__(self):
        k = self.start
        while self.total is None or k < self.total:
            yield self.batch(k)
            k += 1

    def __len__(self):
        if self.total is None:
            raise TypeError("an endless sampler has no length")
        return self.total - self.start
