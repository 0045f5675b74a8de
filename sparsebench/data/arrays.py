"""Datasets that need no download: scikit-learn's digits, MNIST-1D and synthetic tensors."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from sparsebench.data.base import TensorDataModule


class DigitsDataModule(TensorDataModule):
    """scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes).

    Images are resized (bilinear) to ``input_shape[1:]``, the size the model takes.
    """

    def load(self):
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        if tuple(x.shape[1:]) != self.input_shape:
            channels, *size = self.input_shape
            x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
            x = x.expand(-1, channels, *size).contiguous()
        return x, torch.as_tensor(digits.target, dtype=torch.long), None


class MNIST1DDataModule(TensorDataModule):
    """MNIST-1D (Greydanus & Kobak, "Scaling down deep learning with MNIST-1D", ICML 2024).

    Generated offline with the ``mnist1d`` package's ``make_dataset`` and its default
    arguments (5000 samples of length 40, train/test 80/20); never downloaded.
    """

    def __init__(self, num_samples: int | None = None, generator_seed: int = 42, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_samples = num_samples
        self.generator_seed = generator_seed

    def load(self):
        data = _mnist1d(self.generator_seed, self.num_samples)

        def tensors(x, y):
            # Copies: the generated arrays are cached and shared (read-only).
            x = torch.tensor(x, dtype=torch.float32).reshape(len(y), *self.input_shape)
            return x, torch.tensor(y, dtype=torch.long)

        x, y = tensors(data["x"], data["y"])
        return x, y, tensors(data["x_test"], data["y_test"])


@functools.lru_cache(maxsize=4)
def _mnist1d(seed: int, num_samples: int | None) -> dict:
    """One generation per process and arguments (about 4 s on 2 cores): a search worker or
    the random-search baseline builds the dataset for every trial."""
    import random

    import numpy as np
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed = seed
    if num_samples is not None:
        args.num_samples = num_samples
    # make_dataset reseeds Python's and NumPy's global generators; keep the caller's state.
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    for key in ("x", "y", "x_test", "y_test"):  # shared by every caller: never written to
        data[key] = np.asarray(data[key])
        data[key].flags.writeable = False
    return data


class SyntheticDataModule(TensorDataModule):
    """Random inputs of any shape with labels from a fixed random linear teacher.

    The labels are a function of the inputs, so a model can learn them: useful for smoke tests
    and latency runs at any input size and class count.
    """

    def __init__(self, num_samples: int | None = 512, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_samples = num_samples or 512

    def load(self):
        gen = torch.Generator().manual_seed(self.split_seed + 1)
        x = torch.randn(self.num_samples, *self.input_shape, generator=gen)
        teacher = torch.randn(x[0].numel(), self.num_classes, generator=gen)
        y = (x.flatten(1) @ teacher).argmax(dim=1)
        return x, y, None
