"""DataModules: offline sets, and the real on-disk formats of torchvision's and folder loaders."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sparsebench.data import (
    DigitsDataModule,
    ImageFolderDataModule,
    MNIST1DDataModule,
    SyntheticDataModule,
    TorchvisionDataModule,
)
from sparsebench.data.base import split_indices
from sparsebench.training.parts import build_datamodule
from tests.fixtures import compose_config


def _all_labels(dataset) -> torch.Tensor:
    return torch.tensor([int(dataset[i][1]) for i in range(len(dataset))])


def test_split_indices_partition_and_seed() -> None:
    a = split_indices(100, [0.2, 0.1], seed=0)
    assert [len(p) for p in a] == [20, 10, 70]
    assert torch.cat(a).sort().values.tolist() == list(range(100))
    b = split_indices(100, [0.2, 0.1], seed=0)
    c = split_indices(100, [0.2, 0.1], seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0])


def test_digits_resized_and_split() -> None:
    dm = DigitsDataModule(name="digits", num_classes=10, input_shape=[1, 32, 32], split_seed=0)
    dm.setup()
    sizes = [len(dm.train_set), len(dm.val_set), len(dm.test_set)]
    assert sum(sizes) == 1797
    assert sizes[2] == round(0.2 * 1797)
    x, y = dm.train_set[0]
    assert x.shape == (1, 32, 32) and 0 <= int(y) < 10
    train_x = dm.train_set.tensors[0]
    assert abs(float(train_x.mean())) < 1e-4 and abs(float(train_x.std()) - 1) < 1e-3
    assert next(iter(dm.train_dataloader()))[0].shape == (64, 1, 32, 32)


def test_digits_split_fixed_by_split_seed_not_training_seed() -> None:
    def test_labels(seed: int) -> torch.Tensor:
        dm = DigitsDataModule(name="digits", num_classes=10, input_shape=[1, 8, 8], split_seed=seed)
        dm.setup()
        return dm.test_set.tensors[0]

    torch.manual_seed(123)
    a = test_labels(0)
    torch.manual_seed(456)
    assert torch.equal(a, test_labels(0))
    assert not torch.equal(a, test_labels(1))


def test_mnist1d_generated_offline() -> None:
    state = np.random.get_state()
    dm = MNIST1DDataModule(name="mnist1d", num_classes=10, input_shape=[1, 40], num_samples=1000)
    dm.setup()
    assert len(dm.test_set) == 200  # mnist1d's own 80/20 train/test split
    assert len(dm.train_set) + len(dm.val_set) == 800
    assert dm.train_set[0][0].shape == (1, 40)
    assert set(_all_labels(dm.test_set).tolist()) == set(range(10))
    assert np.array_equal(np.random.get_state()[1], state[1])  # global RNG untouched


def test_mnist1d_generated_once_per_process_and_arguments() -> None:
    from sparsebench.data.arrays import _mnist1d

    def load(seed: int):
        return MNIST1DDataModule(
            name="mnist1d",
            num_classes=10,
            input_shape=[1, 40],
            num_samples=500,
            generator_seed=seed,
        ).load()

    x, y, _ = load(7)
    hits = _mnist1d.cache_info().hits
    x2, y2, _ = load(7)
    assert _mnist1d.cache_info().hits == hits + 1  # a search's next trial: no second generation
    assert torch.equal(x, x2) and torch.equal(y, y2)
    x[0] += 1.0  # each caller gets its own tensors; the cached arrays stay as generated
    assert not torch.equal(x, load(7)[0])
    assert not torch.equal(x2, load(8)[0])  # another generator seed, another dataset


def test_synthetic_any_shape_and_learnable_labels() -> None:
    dm = SyntheticDataModule(
        name="synthetic", num_classes=7, input_shape=[2, 5, 3], num_samples=300
    )
    dm.setup()
    x, y = dm.train_set.tensors
    assert x.shape[1:] == (2, 5, 3) and int(y.max()) < 7
    # A linear classifier fits teacher labels far above chance (1/7).
    w = torch.linalg.lstsq(x.flatten(1), torch.nn.functional.one_hot(y, 7).float()).solution
    assert float(((x.flatten(1) @ w).argmax(1) == y).float().mean()) > 0.6


def _write_cifar(
    root: Path, folder: str, files: list[str], meta: str, label_key: str, n_classes: int
) -> None:
    base = root / folder
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in files:
        labels = rng.integers(0, n_classes, 20).tolist()
        data = rng.integers(0, 256, (20, 3072), dtype=np.uint8)
        with open(base / name, "wb") as f:
            pickle.dump({"data": data, label_key: labels}, f)
    key = "label_names" if label_key == "labels" else "fine_label_names"
    with open(base / meta, "wb") as f:
        pickle.dump({key: [f"c{i}" for i in range(n_classes)]}, f)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_reads_torchvision_pickles(tmp_path: Path, name: str) -> None:
    if name == "cifar10":
        files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        _write_cifar(tmp_path, "cifar-10-batches-py", files, "batches.meta", "labels", 10)
    else:
        _write_cifar(tmp_path, "cifar-100-python", ["train", "test"], "meta", "fine_labels", 100)
    cfg = compose_config(
        [f"dataset={name}", f"dataset.data_dir={tmp_path}", "dataset.verify_checksums=false"]
    )
    dm = build_datamodule(cfg)
    dm.setup()
    train_total = 100 if name == "cifar10" else 20
    assert len(dm.train_set) + len(dm.val_set) == train_total
    assert len(dm.test_set) == 20
    x, y = dm.train_set[0]
    assert x.shape == (3, 32, 32) and 0 <= y < cfg.dataset.num_classes


def test_cifar_checksums_verified_by_default(tmp_path: Path) -> None:
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    _write_cifar(tmp_path, "cifar-10-batches-py", files, "batches.meta", "labels", 10)
    dm = TorchvisionDataModule(
        name="cifar10", num_classes=10, input_shape=[3, 32, 32], data_dir=str(tmp_path)
    )
    with pytest.raises(FileNotFoundError, match="dataset 'cifar10' not found under"):
        dm.setup()


class _RunsCode:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))  # unpickling would create this file


def test_unverified_cifar_files_never_run_code(tmp_path: Path) -> None:
    from sparsebench.data.vision import UnsafeFile

    # verify_checksums=false accepts re-packed files, but reads arrays and lists only.
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    _write_cifar(tmp_path, "cifar-10-batches-py", files, "batches.meta", "labels", 10)
    marker = tmp_path / "written-by-the-dataset"
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_3", "wb") as f:
        pickle.dump({"data": _RunsCode(str(marker)), "labels": [0]}, f)
    dm = TorchvisionDataModule(
        name="cifar10",
        num_classes=10,
        input_shape=[3, 32, 32],
        data_dir=str(tmp_path),
        verify_checksums=False,
    )
    with pytest.raises(UnsafeFile, match="data_batch_3 is not a CIFAR pickle of arrays and lists"):
        dm.setup()
    assert not marker.exists()


def _write_idx(raw: Path, prefix: str, n: int) -> None:
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
        struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes()
    )
    (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
        struct.pack(">II", 2049, n) + labels.tobytes()
    )


@pytest.mark.parametrize(
    ("name", "folder"), [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")]
)
def test_mnist_reads_idx_files(tmp_path: Path, name: str, folder: str) -> None:
    _write_idx(tmp_path / folder / "raw", "train", 50)
    _write_idx(tmp_path / folder / "raw", "t10k", 10)
    cfg = compose_config([f"dataset={name}", f"dataset.data_dir={tmp_path}"])
    dm = build_datamodule(cfg)
    dm.setup()
    assert len(dm.train_set) + len(dm.val_set) == 50 and len(dm.test_set) == 10
    assert dm.train_set[0][0].shape == (1, 28, 28)
    x, _ = next(iter(dm.test_dataloader()))
    assert x.shape == (10, 1, 28, 28)


def test_mnist_missing_files_is_one_sentence(tmp_path: Path) -> None:
    dm = TorchvisionDataModule(
        name="mnist", num_classes=10, input_shape=[1, 28, 28], data_dir=str(tmp_path)
    )
    with pytest.raises(FileNotFoundError, match="set dataset.data_dir to a folder"):
        dm.setup()


def test_imagefolder_reads_jpeg_folders(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    for split, count in (("train", 6), ("val", 2)):
        for cls in ("n01", "n02", "n03"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / cls / f"{i}.JPEG", format="JPEG")
    dm = ImageFolderDataModule(
        name="imagefolder",
        num_classes=3,
        input_shape=[3, 32, 32],
        data_dir=str(tmp_path),
        augment=True,
    )
    dm.setup()
    assert len(dm.train_set) + len(dm.val_set) == 18 and len(dm.test_set) == 6
    assert dm.train_set[0][0].shape == (3, 32, 32)
    assert sorted(set(_all_labels(dm.test_set).tolist())) == [0, 1, 2]


def test_imagefolder_class_count_mismatch(tmp_path: Path) -> None:
    for split in ("train", "val"):
        (tmp_path / split / "only").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / split / "only" / "a.png")
    dm = ImageFolderDataModule(
        name="imagefolder", num_classes=5, input_shape=[3, 8, 8], data_dir=str(tmp_path)
    )
    with pytest.raises(ValueError, match="has 1 class folders .* but dataset.num_classes=5"):
        dm.setup()
