"""Prune runner: a trained model pruned once (post-training), evaluated before and after,
optionally fine-tuned with the masks fixed; the results contract plus the dense model's test
metrics (``test/acc_dense`` or, for language models, ``test/ppl_dense``; ``test/loss_dense``),
``time/prune_s`` and ``memory/peak_mb``. All logic is in the library (sparsebench.pruning).

    python -m sparsebench runner=prune +method=wanda checkpoint=outputs/runs/DATE/TIME
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, open_dict

from sparsebench.config.schemas import task_of
from sparsebench.config.targets import list_methods
from sparsebench.errors import ConfigError
from sparsebench.metrics.memory import PeakMemory
from sparsebench.models import build_model
from sparsebench.record.contract import TASK_METRICS
from sparsebench.record.recorder import RunRecorder
from sparsebench.record.results import Results
from sparsebench.sparsity.methods.static import FixedMasks
from sparsebench.training.build import Run
from sparsebench.training.checkpoints import checkpoint_budget, checkpoint_path, load_weights
from sparsebench.training.fit import build_trainer, sparsity_callbacks
from sparsebench.training.machine import training_device
from sparsebench.training.measure import check_finite, measure
from sparsebench.training.progress import RunProgress

log = logging.getLogger(__name__)


def _train_dense(cfg: DictConfig, output_dir: Path) -> tuple[Path, tuple[float, float]]:
    """The same config without the method, trained first; returns its checkpoint and budget."""
    from sparsebench.runners.train import run as train

    dense = cfg.copy()
    with open_dict(dense):
        dense.method = None
        dense.runner = "train"
        dense.paths.output_dir = str(output_dir / "dense")
        dense.trainer.enable_checkpointing = True
    metrics = train(dense).metrics
    budget = float(metrics["flops/train"]), float(metrics["train/samples"])
    return output_dir / "dense" / "checkpoints" / "last.ckpt", budget


def run(cfg: DictConfig, resume: bool = False) -> Results:
    """Prune ``cfg.checkpoint``'s model (or, without one, a pretrained model's own weights or a
    dense model trained first) with the configured post-training method; returns the run's
    :class:`Results`."""
    if resume:
        raise ConfigError(
            "runner 'prune' runs are not resumed (pruning takes minutes, not "
            "epochs); start it again with the same checkpoint."
        )
    parts = Run.build(cfg)
    method, output_dir = parts.method, parts.output_dir
    if method is None or method.kind != "post_training":
        name = "none" if method is None else method.name
        *rest, last = list_methods(kind="post_training")
        raise ConfigError(
            f"runner 'prune' needs a post-training method "
            f"(+method={', '.join(rest)} or {last}); got '{name}'."
        )
    datamodule = parts.build_data()
    available = len(datamodule.train_set)
    if method.calibration_samples > available:
        what = (
            f"sequences of dataset.seqlen={cfg.dataset.seqlen} tokens"
            if task_of(cfg) == "language_modeling"
            else "samples"
        )
        raise ConfigError(
            f"method.calibration_samples={method.calibration_samples} is more than the "
            f"{available} training {what} of dataset '{cfg.dataset.name}'."
        )
    model = build_model(cfg.model)
    method.attach(model)  # N:M that does not divide a layer fails here, before any training
    if cfg.checkpoint is None and getattr(model, "pretrained", False):
        # A checkpoint loaded as the model (model=hf_causal_lm): its own weights are pruned.
        path, method.dense_train_flops, dense_samples = None, 0.0, 0
    elif cfg.checkpoint is None:
        log.warning(
            "no checkpoint given: training the dense model first with the same config "
            "(its run is in %s)",
            output_dir / "dense",
        )
        path, (method.dense_train_flops, dense_samples) = _train_dense(cfg, output_dir)
    else:
        path = checkpoint_path(str(cfg.checkpoint))
        method.dense_train_flops, dense_samples = checkpoint_budget(path)
    if path is not None:
        load_weights(model, path, cfg.model.model_name)

    parts.seed()
    with RunRecorder(
        cfg, output_dir, parts.machine_tags(), {"pattern": method.pattern_tag}
    ) as record:
        results = record.results
        results.attach("checkpoint", str(path or cfg.model.name_or_path))
        progress = RunProgress(record, max_loss=cfg.trainer.get("max_loss"))
        module = parts.module(model)
        evaluate = build_trainer(cfg, output_dir, [], enable_checkpointing=False)
        (dense,) = evaluate.test(module, datamodule=datamodule, verbose=False)
        results.update({f"{k}_dense": v for k, v in dense.items()})

        gen = torch.Generator().manual_seed(cfg.seed)
        index = torch.randperm(available, generator=gen)[: method.calibration_samples]
        inputs = torch.stack([datamodule.train_set[int(i)][0] for i in index])
        batches = list(inputs.split(datamodule.eval_batch_size))
        # Pruned where the run trains: on a GPU the model goes there for pruning, and back.
        prune_device = "cuda" if training_device(cfg) == "cuda" else None
        start = time.perf_counter()
        with PeakMemory() as memory:
            method.prune(model, batches, device=prune_device)
        results.update({"time/prune_s": time.perf_counter() - start, "memory/peak_mb": memory.mb})
        results.attach("layers", method.errors)  # reconstruction error per layer vs magnitude

        trainer = evaluate
        if method.finetune_epochs:
            trainer = build_trainer(
                cfg,
                output_dir,
                [*sparsity_callbacks(FixedMasks(method)), progress],
                max_epochs=method.finetune_epochs,
            )
            trainer.fit(module, datamodule=datamodule)
        (test,) = trainer.test(module, datamodule=datamodule, verbose=False)
        check_finite(test)
        # time/train_s: this run's own training, the fine-tuning (the dense run has its own).
        results.update(
            {
                **test,
                "train/samples": dense_samples + progress.samples_seen,
                "time/train_s": progress.train_seconds,
            }
        )
        (val,) = trainer.validate(module, datamodule=datamodule, verbose=False)
        results.update({k: v for k, v in val.items() if k in TASK_METRICS[task_of(cfg)]})
        measure(results, parts, model, progress.samples_seen, benchmark=record.is_zero)
        record.log_model(model, datamodule.example_input(2))
    results.raise_unless_ok()
    return results
