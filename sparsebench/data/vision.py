"""Real image datasets read from disk: torchvision's CIFAR/MNIST loaders and image folders.

They download only when ``download=true`` (and the machine is online); otherwise they read a
local ``data_dir`` laid out as torchvision's downloads leave it.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from torchvision import datasets, transforms

from sparsebench.data.base import SparseBenchDataModule, subset_split

# Per-set channel statistics (the values published with each dataset's common recipes).
STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "imagefolder": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


class UnsafeFile(ValueError):
    """A dataset file that holds more than data (unpickling it would run code)."""


class _ArraysOnly(pickle.Unpickler):
    """An unpickler that rebuilds NumPy arrays, containers, numbers and strings, and refuses
    every other global: an unverified file can then hold data but never run code. Hand-written
    because Python offers only the hook (the "Restricting Globals" recipe of the pickle docs)."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed")
        return super().find_class(module, name)


def load_arrays(path: Path):
    """A CIFAR batch or meta file (Python pickle of arrays and lists), refusing anything that
    would execute code."""
    with open(path, "rb") as f:
        try:
            return _ArraysOnly(f, encoding="latin1").load()
        except (pickle.UnpicklingError, EOFError, ValueError, KeyError) as exc:
            raise UnsafeFile(
                f"{path} is not a CIFAR pickle of arrays and lists ({exc}); it was not loaded"
            ) from None


def _cifar_class(base: type[datasets.CIFAR10], verify: bool) -> type[datasets.CIFAR10]:
    """torchvision's CIFAR reader, optionally without its MD5 check.

    torchvision refuses files whose MD5 differs from the official archive's, which also
    rejects a user's own re-packed copy in the same pickle format. ``verify_checksums=false``
    accepts such a copy, but then the files are unknown: they are read with an unpickler that
    rebuilds arrays and lists only (:class:`_ArraysOnly`), never torchvision's plain
    ``pickle.load``, so a crafted file cannot run code.
    """
    if verify:
        return base

    class Unverified(base):  # type: ignore[misc, valid-type]
        def __init__(
            self,
            root,
            train: bool = True,
            transform=None,
            target_transform=None,
            download: bool = False,
        ) -> None:
            datasets.VisionDataset.__init__(
                self, root, transform=transform, target_transform=target_transform
            )
            self.train = train
            folder = Path(self.root, self.base_folder)
            files = [name for name, _ in (self.train_list if train else self.test_list)]
            missing = [n for n in [*files, self.meta["filename"]] if not (folder / n).is_file()]
            if missing:
                raise RuntimeError(f"missing {', '.join(missing)} in {folder}")
            data, self.targets = [], []
            for name in files:
                entry = load_arrays(folder / name)
                data.append(entry["data"])
                self.targets.extend(entry["labels"] if "labels" in entry else entry["fine_labels"])
            self.data = np.vstack(data).reshape(-1, 3, 32, 32).transpose((0, 2, 3, 1))
            self.classes = load_arrays(folder / self.meta["filename"])[self.meta["key"]]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    return Unverified


class TorchvisionDataModule(SparseBenchDataModule):
    """CIFAR-10/100, MNIST and Fashion-MNIST through ``torchvision.datasets``."""

    SETS = {
        "cifar10": datasets.CIFAR10,
        "cifar100": datasets.CIFAR100,
        "mnist": datasets.MNIST,
        "fashion_mnist": datasets.FashionMNIST,
    }

    def __init__(
        self, download: bool = False, verify_checksums: bool = True, augment: bool = False, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        if self.name not in self.SETS:
            raise ValueError(
                f"unknown torchvision dataset '{self.name}'; known: {', '.join(self.SETS)}."
            )
        self.download = download
        self.verify_checksums = verify_checksums
        self.augment = augment

    def _transforms(self, train: bool) -> transforms.Compose:
        mean, std = STATS[self.name]
        size = self.input_shape[1:]
        steps: list = [transforms.Resize(size)]
        if train and self.augment:
            steps += [
                transforms.RandomCrop(size, padding=size[0] // 8),
                transforms.RandomHorizontalFlip(),
            ]
        steps += [transforms.ToTensor(), transforms.Normalize(mean, std)]
        if self.input_shape[0] != len(mean):  # e.g. MNIST (1 channel) for a 3-channel model
            channels = self.input_shape[0]
            steps.append(transforms.Lambda(lambda x: x.expand(channels, *x.shape[1:])))
        return transforms.Compose(steps)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        cls = self.SETS[self.name]
        if cls in (datasets.CIFAR10, datasets.CIFAR100):
            cls = _cifar_class(cls, self.verify_checksums)
        root = self.data_dir or "data"
        try:
            train_aug = cls(
                root, train=True, download=self.download, transform=self._transforms(True)
            )
            train_plain = cls(root, train=True, download=False, transform=self._transforms(False))
            self.test_set = cls(
                root, train=False, download=False, transform=self._transforms(False)
            )
        except UnsafeFile as exc:
            raise UnsafeFile(f"dataset '{self.name}': {exc}.") from None
        except RuntimeError as exc:
            raise FileNotFoundError(
                f"dataset '{self.name}' not found under '{root}' ({exc}); set dataset.data_dir to "
                "a folder holding torchvision's files, or dataset.download=true when online."
            ) from exc
        self.train_set, _ = subset_split(train_aug, self.val_fraction, self.split_seed)
        _, self.val_set = subset_split(train_plain, self.val_fraction, self.split_seed)


class ImageFolderDataModule(SparseBenchDataModule):
    """ImageNet-style folders: ``data_dir/train/CLASS/*.jpg`` and ``data_dir/val/CLASS/*.jpg``.

    The ``val`` folder is the test split (as ImageNet's validation set is used in papers);
    the validation split is cut out of ``train`` by ``split_seed``.
    """

    def __init__(self, augment: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.augment = augment

    def _transforms(self, train: bool) -> transforms.Compose:
        mean, std = STATS["imagefolder"]
        size = self.input_shape[1:]
        if train and self.augment:
            steps: list = [transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip()]
        else:
            steps = [transforms.Resize(int(size[0] * 256 / 224)), transforms.CenterCrop(size)]
        steps += [transforms.ToTensor(), transforms.Normalize(mean, std)]
        return transforms.Compose(steps)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        if not self.data_dir:
            raise FileNotFoundError(
                "dataset 'imagefolder' needs dataset.data_dir=PATH (with train/ and val/)."
            )
        root = Path(self.data_dir)
        for split in ("train", "val"):
            if not (root / split).is_dir():
                raise FileNotFoundError(f"dataset 'imagefolder': '{root / split}' is not a folder.")
        train_aug = datasets.ImageFolder(root / "train", transform=self._transforms(True))
        train_plain = datasets.ImageFolder(root / "train", transform=self._transforms(False))
        self.test_set = datasets.ImageFolder(root / "val", transform=self._transforms(False))
        if len(train_aug.classes) != self.num_classes:
            raise ValueError(
                f"dataset 'imagefolder' has {len(train_aug.classes)} class folders under "
                f"'{root / 'train'}' but dataset.num_classes={self.num_classes}."
            )
        self.train_set, _ = subset_split(train_aug, self.val_fraction, self.split_seed)
        _, self.val_set = subset_split(train_plain, self.val_fraction, self.split_seed)
