"""Checkpoints: written atomically, read without running code, carrying the RNG states."""

from __future__ import annotations

import json
import logging
import pickle
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from sparsebench.errors import ConfigError, first_line
from sparsebench.record.results import write_atomic

log = logging.getLogger(__name__)


def rng_states() -> dict[str, Any]:
    """torch (CPU and CUDA), NumPy and Python RNG states, in types ``torch.load`` accepts with
    ``weights_only=True`` (resume never unpickles code)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, state, _ = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "python": [int(version), list(state)],
    }


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, state = states["python"]
    random.setstate((version, tuple(state), None))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file in the same folder, then renamed over the old
    one: a full disk or a kill mid-write leaves the last good checkpoint in place (Lightning's
    own writer truncates the target first). Loading is unchanged."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            write_atomic(path, lambda f: torch.save(checkpoint, f))
        except Exception as exc:  # torch's zip writer reports a full disk as a RuntimeError
            raise OSError(
                f"could not write checkpoint {path} ({type(exc).__name__}: "
                f"{str(exc).strip()[:200]}); the previous one is kept"
            ) from exc


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint's contents, unpickled with ``torch.load(weights_only=True)``: tensors,
    containers and plain values only. Run folders and checkpoints are shared between people, so
    one that would need arbitrary code to load (a crafted or foreign pickle) is refused, as is a
    truncated or non-PyTorch file, in one sentence."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        what = f" ({found.group(1)})" if found else ""
        raise ConfigError(
            f"checkpoint {path} holds an object{what} that only running its code could rebuild; "
            "sparsebench loads checkpoints with weights_only=True and refuses it."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise ConfigError(
            f"checkpoint {path} cannot be read ({first_line(exc, 200)}); it is truncated or not a PyTorch "
            "checkpoint."
        ) from None
    if not isinstance(state, dict):
        raise ConfigError(f"checkpoint {path} holds a {type(state).__name__}, not a state dict.")
    return state


def checkpoint_path(value: str) -> Path:
    """The ``.ckpt`` a ``checkpoint=`` value names: a run folder (its checkpoints/last.ckpt) or a
    file."""
    path = Path(value)
    if path.is_dir():
        found = path / "checkpoints" / "last.ckpt"
        if not found.is_file():
            raise ConfigError(f"checkpoint folder {path} has no checkpoints/last.ckpt.")
        return found
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} does not exist (give a run folder or a .ckpt file).")
    return path


def load_weights(model: torch.nn.Module, path: Path, model_name: str) -> None:
    """The checkpoint's model weights (masks of a sparse-trained run are already in them)."""
    state = load_checkpoint(path)
    weights = {
        k.removeprefix("model."): v
        for k, v in state.get("state_dict", state).items()
        if not k.endswith("weight_mask")
    }
    own = {k: v for k, v in model.state_dict().items() if not k.endswith("weight_mask")}
    missing, unexpected = sorted(set(own) - set(weights)), sorted(set(weights) - set(own))
    shapes = [k for k in set(own) & set(weights) if own[k].shape != weights[k].shape]
    if missing or unexpected or shapes:
        detail = "; ".join(
            f"{label} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
            for label, keys in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("other shapes", sorted(shapes)),
            )
            if keys
        )
        raise ConfigError(
            f"checkpoint {path} does not match model '{model_name}' of this config ({detail})."
        )
    model.load_state_dict(weights, strict=False)  # strict but for the masks attached here


def checkpoint_budget(path: Path) -> tuple[float, float]:
    """(``flops/train``, ``train/samples``) of the run that wrote the checkpoint (its
    results.json), so that the pruned run's budget counts the dense training; zeros (and a
    warning) when unknown."""
    for folder in (path.parent.parent, path.parent):
        results = folder / "results.json"
        if results.is_file():
            metrics = json.loads(results.read_text())["metrics"]
            return float(metrics.get("flops/train", 0.0)), float(metrics.get("train/samples", 0.0))
    log.warning(
        "checkpoint %s has no results.json beside it: the training budget counts only "
        "the pruning run's own fine-tuning",
        path,
    )
    return 0.0, 0.0
