"""Train runner: build the run from its config, fit, test, measure, record. All logic is in the
library (sparsebench.training); this is the order of the steps."""

from __future__ import annotations

import logging

import lightning as L
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from sparsebench.errors import ConfigError
from sparsebench.record.identity import run_hash
from sparsebench.record.recorder import RunRecorder
from sparsebench.record.results import Results
from sparsebench.record.resume import resume_point, resumed_by_rank_zero
from sparsebench.training.build import Run
from sparsebench.training.checkpoints import load_checkpoint
from sparsebench.training.fit import fit, sparsity_callbacks
from sparsebench.training.kernels import SparseKernels, require_kernels
from sparsebench.training.measure import check_finite, final_val, measure
from sparsebench.training.progress import RunProgress

log = logging.getLogger(__name__)


def run(
    cfg: DictConfig,
    callbacks: list[L.Callback] | None = None,
    tags: dict[str, str] | None = None,
    started: float | None = None,
    resume: bool = False,
) -> Results:
    """Train ``cfg``'s model on its dataset and write the results contract; returns the run's
    :class:`Results` (a run that failed, diverged or was interrupted raises, recorded as such).

    For a search trial run in-process: ``callbacks`` join the Trainer's (the pruning callback),
    ``tags`` join the run's (study, trial number), ``started`` (time.time()) replaces the
    process start for ``time/startup_s``. ``resume``: continue the unfinished run in
    ``cfg.paths.output_dir`` from its last checkpoint (``python -m sparsebench resume=DIR``);
    without it, a requeued job finding its own interrupted run there continues it too."""
    parts = Run.build(cfg)
    method, transform, output_dir = parts.method, parts.transform, parts.output_dir
    if method is not None and method.kind == "post_training":
        raise ConfigError(
            f"method '{method.name}' prunes a trained model: run it with "
            f"runner=prune (the train runner would train dense)."
        )
    require_kernels(cfg.trainer.get("sparse_kernels", "off"))
    checkpoint = _resume_from(parts, resume)
    parts.seed()
    datamodule = parts.build_data()
    with RunRecorder(
        cfg,
        output_dir,
        {**parts.machine_tags(), **(tags or {})},
        {"pattern": parts.pattern},
        resume=checkpoint is not None,
    ) as record:
        results = record.results
        if checkpoint is not None:
            results.attach("resumed_from", str(checkpoint))
        # Sparse-IFT and Monarch transform the model; DASS searches and derives another one.
        model = parts.model()
        if transform is not None:
            record.add_transform(
                transform.extra_results(), transform.extra_metrics(), transform.description
            )
        progress = RunProgress(record, started, cfg.trainer.get("max_loss"))
        kernels = sparsity_callbacks(method, cfg.trainer.get("sparse_kernels", "off"))
        callbacks = [*kernels, progress, *(callbacks or [])]
        module = parts.module(model)
        trainer = fit(module, datamodule, method, cfg, output_dir, callbacks, checkpoint)
        results.update(
            {
                "time/train_s": progress.train_seconds,
                "train/samples": progress.samples_seen,
                **progress.step_ms,
            }
        )
        results.update(final_val(trainer, results))
        for callback in kernels:  # the sparse training kernels' choice per layer
            if isinstance(callback, SparseKernels):
                results.attach("kernels_train", callback.section())
                measured = callback.measure()  # its step timed against a dense one
                if measured:
                    results.update(measured["metrics"], measured["tags"])
        (test,) = trainer.test(module, datamodule=datamodule, verbose=False)
        results.update(test)
        check_finite(test)
        measure(results, parts, model, progress.samples_seen, benchmark=record.is_zero)
        record.log_model(model, datamodule.example_input(2))
    results.raise_unless_ok()
    return results


def _resume_from(parts: Run, resume: bool):
    """The checkpoint this run continues from, or None: rank zero decides (``resume``, or a
    requeued job's own interrupted run of the same config); DDP's other ranks follow it."""
    output_dir = parts.output_dir
    if getattr(rank_zero_only, "rank", 0) == 0:
        checkpoint = resume_point(output_dir, resume, None if resume else run_hash(parts.cfg))
    else:  # a DDP rank started by rank zero's fit: follow its choice
        checkpoint = resumed_by_rank_zero(output_dir)
    refusal = next(
        (
            part.resumable
            for part in (parts.method, parts.transform)
            if part is not None and part.resumable is not True
        ),
        None,
    )
    if checkpoint is not None and refusal is not None:
        if resume:
            raise ConfigError(refusal)
        log.warning("%s; starting a new run in %s", refusal, output_dir)
        checkpoint = None
    if checkpoint is not None:
        load_checkpoint(checkpoint)  # refused in one sentence before anything is recorded
        log.warning("resuming the run in %s from %s", output_dir, checkpoint)
    return checkpoint
