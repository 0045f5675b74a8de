"""Schemas of the text datasets (sparsebench.data.text): local text and Shakespeare, and the
datasets with published splits that ``datasets`` reads (WikiText-2, C4)."""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING

from sparsebench.config.fields import NO_HASH
from sparsebench.errors import require


@dataclass
class TextDatasetConfig:
    """Text for causal language models (sparsebench.data.text): documents split by document,
    windows of ``seqlen`` tokens; ``tokenizer`` the model's (a folder or hub id), or null for a
    byte-level BPE of ``vocab_size`` trained on the training split and saved in the run folder."""

    _target_: str = MISSING
    name: str = MISSING
    task: str = "language_modeling"
    seqlen: int = 128
    vocab_size: int = 2048
    tokenizer: str | None = None
    tokenizer_dir: str | None = field(default=None, metadata=NO_HASH)
    max_tokens: int | None = None  # per split, for quick runs
    batch_size: int = 16
    eval_batch_size: int = 16
    val_fraction: float = 0.05  # of the documents
    test_fraction: float = 0.1
    split_seed: int = 0
    data_dir: str | None = field(default=None, metadata=NO_HASH)
    num_workers: int = field(default=0, metadata=NO_HASH)

    def __post_init__(self) -> None:
        require(
            self.task == "language_modeling",
            f"a text dataset's task is language_modeling, got '{self.task}'.",
        )
        require(self.seqlen >= 2, f"dataset.seqlen must be >= 2, got {self.seqlen}.")
        require(
            257 <= self.vocab_size <= 1_000_000,
            f"dataset.vocab_size must be in [257, 1000000] (a byte-level BPE has 256 bytes and an end token), got {self.vocab_size}.",
        )
        require(self.batch_size >= 1, f"dataset.batch_size must be >= 1, got {self.batch_size}.")
        require(
            self.eval_batch_size >= 1,
            f"dataset.eval_batch_size must be >= 1, got {self.eval_batch_size}.",
        )
        for key in ("val_fraction", "test_fraction"):
            value = getattr(self, key)
            require(0 < value < 1, f"dataset.{key} must be in (0, 1), got {value}.")
        if self.max_tokens is not None:
            require(
                self.max_tokens >= self.seqlen,
                f"dataset.max_tokens must be >= dataset.seqlen ({self.seqlen}), got {self.max_tokens}.",
            )
        require(self.num_workers >= 0, f"dataset.num_workers must be >= 0, got {self.num_workers}.")


@dataclass
class HubTextDatasetConfig(TextDatasetConfig):
    """A text dataset with published splits read by ``datasets`` (sparsebench.data.text:
    WikiText-2, C4): from the hub (online, or its cache), or ``data_dir``, a folder written by
    ``DatasetDict.save_to_disk``. Each split's texts are joined by ``joiner`` and tokenised once,
    as the pruning papers' evaluation does; ``documents`` keeps a range of a split's rows."""

    hub_path: str = MISSING
    hub_config: str | None = None
    data_files: dict[str, str] | None = None
    splits: dict[str, str] = field(
        default_factory=lambda: {"train": "train", "val": "validation", "test": "test"}
    )
    documents: dict[str, list[int]] | None = None  # split -> [start, stop) of its rows
    text_field: str = "text"
    joiner: str = "\n\n"

    def __post_init__(self) -> None:
        super().__post_init__()
        require(
            set(self.splits) == {"train", "val", "test"},
            f"dataset.splits must map train, val and test to the dataset's splits, got "
            f"{', '.join(self.splits) or 'nothing'}.",
        )
        for split, rows in (self.documents or {}).items():
            require(
                split in self.splits and len(rows) == 2 and 0 <= rows[0] < rows[1],
                f"dataset.documents.{split} must be [start, stop) of a split's rows with "
                f"0 <= start < stop, got {rows}.",
            )
