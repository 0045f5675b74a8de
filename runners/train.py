"""Train runner: compose, instantiate, fit, test, measure, report. All logic is in the library."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from sparsebench.config.checks import validate
from sparsebench.errors import ConfigError
from sparsebench.record.identity import run_hash
from sparsebench.record.recorder import RunRecorder
from sparsebench.record.results import check_user_tags
from sparsebench.record.resume import resume_point, resumed_by_rank_zero
from sparsebench.training import (
    RunProgress,
    build_datamodule,
    build_hardware,
    build_method,
    build_module,
    build_run_model,
    build_trainer,
    build_transform,
    check_finite,
    check_machine,
    final_val,
    fit,
    load_checkpoint,
    measure,
    pattern_tag,
    sparsity_callbacks,
    training_device,
)

log = logging.getLogger(__name__)


def run(
    cfg: DictConfig,
    callbacks: list[L.Callback] | None = None,
    tags: dict[str, str] | None = None,
    started: float | None = None,
    resume: bool = False,
) -> dict[str, float]:
    """Train ``cfg``'s model on its dataset and write the results contract; returns the metrics.

    For a search trial run in-process: ``callbacks`` join the Trainer's (the pruning callback),
    ``tags`` join the run's (study, trial number), ``started`` (time.time()) replaces the
    process start for ``time/startup_s``. ``resume``: continue the unfinished run in
    ``cfg.paths.output_dir`` from its last checkpoint (``python -m sparsebench resume=DIR``);
    without it, a requeued job finding its own interrupted run there continues it too."""
    validate(cfg)
    check_machine(cfg)
    check_user_tags(cfg)
    output_dir = Path(cfg.paths.output_dir)
    method = build_method(cfg)
    transform = build_transform(cfg, method)
    if method is not None and getattr(method, "post_training", False):
        raise ConfigError(f"method '{method.name}' prunes a trained model: run it with "
                          f"runner=prune (the train runner would train dense).")  # fmt: skip
    if getattr(rank_zero_only, "rank", 0) == 0:
        checkpoint = resume_point(output_dir, resume, None if resume else run_hash(cfg))
    else:  # a DDP rank started by rank zero's fit: follow its choice
        checkpoint = resumed_by_rank_zero(output_dir)
    refusal = next((part.resumable for part in (method, transform)
                    if part is not None and part.resumable is not True), None)  # fmt: skip
    if checkpoint is not None and refusal is not None:
        if resume:
            raise ConfigError(refusal)
        log.warning("%s; starting a new run in %s", refusal, output_dir)
        checkpoint = None
    if checkpoint is not None:
        load_checkpoint(checkpoint)  # refused in one sentence before anything is recorded
        log.warning("resuming the run in %s from %s", output_dir, checkpoint)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build_datamodule(cfg, check=True)
    hardware = build_hardware(cfg)
    hardware.check(method.pattern if method else None, method.name if method else "dense")

    contract = {"pattern": pattern_tag(method, transform)}
    machine = {**hardware.fingerprint(), "hw/train_device": training_device(cfg)}
    with RunRecorder(cfg, output_dir, {**machine, **(tags or {})}, contract,
                     resume=checkpoint is not None) as record:  # fmt: skip
        results = record.results
        if checkpoint is not None:
            results.data["resumed_from"] = str(checkpoint)
            results.save()
        # Sparse-IFT and Monarch transform the model; DASS searches and derives another one.
        model = build_run_model(cfg, datamodule, method, transform)
        if transform is not None:
            extra = transform.extra_results()
            results.data.update(extra)
            results.update(transform.extra_metrics())
            for key, value in extra.items():  # e.g. genotype.json
                path = output_dir / f"{key}.json"
                path.write_text(json.dumps(value, indent=1, default=str))
                record.artifacts.append(path)
            if transform.description:
                results.data["transform"] = transform.description
                record.lines += transform.description
        progress = RunProgress(record, started, cfg.trainer.get("max_loss"))
        callbacks = [*sparsity_callbacks(method), progress, *(callbacks or [])]
        module = build_module(cfg, model)
        trainer = fit(module, datamodule, method,
                      lambda **kw: build_trainer(cfg, output_dir, callbacks, **kw), checkpoint)  # fmt: skip
        results.update({"time/train_s": progress.train_seconds,
                        "train/samples": progress.samples_seen})  # fmt: skip
        results.update(final_val(trainer, results))
        (test,) = trainer.test(module, datamodule=datamodule, verbose=False)
        results.update(test)
        check_finite(test)

        measure(results, cfg, model, datamodule.example_input(1), progress.samples_seen, method,
                hardware, benchmark=record.is_zero, transform=transform)  # fmt: skip
        record.log_model(model, datamodule.example_input(2))
    results.raise_unless_ok()
    return results.metrics
