"""LightningDataModule base classes shared by every dataset.

Splits are fixed by ``split_seed`` (not the training seed), so replicates over seeds train and
evaluate on the same samples.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, Subset, TensorDataset


def split_indices(n: int, fractions: Sequence[float], seed: int) -> list[torch.Tensor]:
    """Shuffle ``range(n)`` with ``seed`` and cut it into len(fractions)+1 parts.

    The parts have sizes round(f * n) for each fraction and the remainder last.
    """
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    parts, start = [], 0
    for frac in fractions:
        size = max(1, round(frac * n))
        parts.append(perm[start : start + size])
        start += size
    parts.append(perm[start:])
    return parts


class EpochSampler(RandomSampler):
    """A random order of the training set drawn from (seed, epoch) alone, like
    DistributedSampler's: Lightning calls ``set_epoch`` at every epoch start, so a run resumed
    from a checkpoint sees the same batches as one that never stopped, whatever else drew from
    the global RNG in between. ``seed`` is torch's initial seed when the loader is built
    (``seed_everything(cfg.seed)``; Sparse Model Soups reseeds each copy)."""

    def __init__(self, data_source: Dataset, seed: int) -> None:
        self.seed, self.epoch = seed, 0
        super().__init__(data_source, generator=torch.Generator())

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        # Modulo 2**63: an unseeded process's initial seed is a random 64-bit number, and
        # manual_seed takes a signed one (seeded runs keep their small values).
        self.generator.manual_seed((self.seed * 1_000_003 + self.epoch) % 2**63)
        return super().__iter__()


class SparseBenchDataModule(L.LightningDataModule):
    """Holds train/val/test datasets and builds their loaders.

    Subclasses implement :meth:`setup` and set ``self.train_set``, ``self.val_set`` and
    ``self.test_set``; ``input_shape`` and ``num_classes`` describe one sample.
    """

    def __init__(
        self,
        name: str,
        num_classes: int,
        input_shape: Sequence[int],
        batch_size: int = 64,
        eval_batch_size: int = 256,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        split_seed: int = 0,
        num_workers: int = 0,
        data_dir: str | None = None,
        **_: object,
    ) -> None:
        super().__init__()
        self.name = name
        self.num_classes = num_classes
        self.input_shape = tuple(int(d) for d in input_shape)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.split_seed = split_seed
        self.num_workers = num_workers
        self.data_dir = data_dir
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    def _loader(self, dataset: Dataset | None, shuffle: bool, batch_size: int) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"dataset '{self.name}': call setup() before asking for loaders.")
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=EpochSampler(dataset, torch.initial_seed()) if shuffle else None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, True, self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, False, self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, False, self.eval_batch_size)

    @property
    def num_train_samples(self) -> int:
        if self.train_set is None:
            self.setup("fit")
        return len(self.train_set)  # type: ignore[arg-type]

    def example_input(self, batch_size: int = 1) -> torch.Tensor:
        """A batch of zeros shaped like the model input (for FLOPs and latency)."""
        return torch.zeros(batch_size, *self.input_shape)


class TensorDataModule(SparseBenchDataModule):
    """In-memory data: subclasses return (x, y) tensors, normalised and shaped.

    Sets without a published test split are cut into train/val/test by ``split_seed``; sets
    with one (``load`` returns a test pair) only cut val out of train.
    """

    def load(self) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        x, y, test = self.load()
        if test is None:
            test_idx, val_idx, train_idx = split_indices(
                len(y), [self.test_fraction, self.val_fraction], self.split_seed
            )
            test = (x[test_idx], y[test_idx])
        else:
            val_idx, train_idx = split_indices(len(y), [self.val_fraction], self.split_seed)
        # Normalise with training statistics only.
        mean, std = x[train_idx].mean(), x[train_idx].std().clamp_min(1e-8)
        x, test_x = (x - mean) / std, (test[0] - mean) / std
        self.train_set = TensorDataset(x[train_idx], y[train_idx])
        self.val_set = TensorDataset(x[val_idx], y[val_idx])
        self.test_set = TensorDataset(test_x, test[1])


def subset_split(dataset: Dataset, val_fraction: float, seed: int) -> tuple[Subset, Subset]:
    """Cut a validation subset out of a training dataset, fixed by ``seed``."""
    val_idx, train_idx = split_indices(len(dataset), [val_fraction], seed)  # type: ignore[arg-type]
    return Subset(dataset, train_idx.tolist()), Subset(dataset, val_idx.tolist())
