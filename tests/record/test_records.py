"""The fault matrix: real processes disturbed where runs die in practice (SIGKILL in an epoch,
between epochs and while latency is measured; SIGTERM; the tracking server killed mid-run; a
full disk; a diverging run and a diverging study). Each case checks that results.json, MLflow
and the leaderboard agree, and that nothing already computed is lost; the resume test checks
that a killed run continued from its checkpoint ends exactly as an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from sparsebench.leaderboard.rows import admit
from sparsebench.record.results import CONTRACT_METRICS, CONTRACT_TAGS
from tests.fixtures import REPO, free_port, wait_until_healthy

pytestmark = pytest.mark.slow

# RigL on MNIST-1D: 3 epochs of 8 batches, a mask update every 5 steps (masks move mid-epoch).
RUN = ["model=mlp", "dataset=mnist1d", "+method=rigl", "method.update_interval=5",
       "trainer.max_epochs=3", "trainer.limit_train_batches=8", "trainer.limit_val_batches=2",
       "trainer.limit_test_batches=2", "hardware.threads=1", "hardware.min_run_time=0.02",
       "hardware.warmup=1", "print_summary=false", "trainer.enable_progress_bar=false"]  # fmt: skip


def env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    out["PYTHONPATH"] = str(REPO)  # tests.fixtures.Pause inside the run
    return out


def pause(tmp: Path, name: str, **options) -> str:
    """A ``trainer.callbacks`` override holding the run at a point (tests.fixtures.Pause)."""
    fields = {"marker": str(tmp / f"{name}.at"), "go": str(tmp / f"{name}.go"), **options}
    body = ",".join(f"{k}:{json.dumps(v) if isinstance(v, str) else v}" for k, v in fields.items())
    return f"+trainer.callbacks=[{{_target_:tests.fixtures.Pause,{body}}}]"


def start(tmp: Path, name: str, *extra: str, uri: str | None = None) -> subprocess.Popen:
    keys = {e.split("=")[0] for e in extra}
    args = [*(a for a in RUN if a.split("=")[0] not in keys), *extra, f"hydra.run.dir={tmp / name}",
            f"logger.tracking_uri={uri or f'sqlite:///{tmp}/mlflow.db'}"]  # fmt: skip
    return subprocess.Popen([sys.executable, "-m", "sparsebench", *args], cwd=tmp, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def cli(tmp: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sparsebench", *args], cwd=tmp, env=env(),
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def reach(tmp: Path, name: str, proc: subprocess.Popen, timeout: float = 240) -> None:
    marker = tmp / f"{name}.at"
    deadline = time.time() + timeout
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"run {name} ended early:\n{proc.stderr.read()[-3000:]}")
        assert time.time() < deadline, f"run {name} never reached its pause"
        time.sleep(0.05)


def kill(proc: subprocess.Popen, signum: int = signal.SIGKILL) -> None:
    proc.send_signal(signum)
    proc.wait(timeout=120)


def record(tmp: Path, name: str) -> dict:
    return json.loads((tmp / name / "results.json").read_text())


def mlflow_run(data: dict):
    client = MlflowClient(tracking_uri=data["mlflow"]["tracking_uri"])
    return client, client.get_run(data["mlflow"]["run_id"])


def board(uri: str) -> tuple[set[str], dict[str, set[str]]]:
    """Run uids the leaderboard ranks, and those it leaves out by reason."""
    from sparsebench.leaderboard.read import read_runs

    runs = read_runs(uri)
    client = MlflowClient(tracking_uri=uri)
    for run in runs:  # name the runs by the uid results.json holds
        run["name"] = client.get_run(run["id"]).data.tags["sparsebench.run_uid"]
    admitted, left = admit(runs)
    return {r["name"] for r in admitted}, {k: set(v) for k, v in left.items()}


def masks(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return {k: v for k, v in state.items() if k.endswith("weight_mask")}


def assert_identifiable(data: dict, run) -> None:
    """A killed run still says what it was: params, config and contract tags from the start."""
    assert run.info.status == "RUNNING" and data["status"] == "running"
    assert run.data.tags["sparsebench.status"] == "running"
    assert set(CONTRACT_TAGS) <= run.data.tags.keys()
    assert run.data.params["method.name"] == "rigl" and len(run.data.params) > 50
    assert run.data.tags["run_hash"] == data["tags"]["run_hash"]


def upload(*args: str) -> tuple[int, str]:
    """``sparsebench upload ARGS`` in-process; (exit code, what it printed)."""
    import contextlib
    import io

    from sparsebench.record.upload import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(args))
    return code, out.getvalue()


def test_kill_9_mid_epoch_then_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    (tmp_path / "whole.go").touch()  # same config (same run_hash), never held
    whole = start(tmp_path, "whole", pause(tmp_path, "whole", epoch=1, batch=3))
    killed = start(tmp_path, "killed", pause(tmp_path, "killed", epoch=1, batch=3))
    reach(tmp_path, "killed", killed)
    kill(killed)
    assert whole.wait(timeout=300) == 0, whole.stderr.read()[-3000:]
    data = record(tmp_path, "killed")
    assert [row["epoch"] for row in data["history"]] == [0]  # epoch 0 kept, epoch 1 in flight
    client, run = mlflow_run(data)
    assert_identifiable(data, run)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/acc")] == [0]
    ranked, left = board(uri)
    assert left == {"running": {data["run_uid"]}} and ranked == {
        record(tmp_path, "whole")["run_uid"]
    }

    # `upload` settles a run whose process is gone: interrupted in results.json and MLflow.
    code, printed = upload(str(tmp_path / "killed"), "--tracking-uri", uri)
    assert code == 0 and printed.startswith("completed: ")
    data = record(tmp_path, "killed")
    assert data["status"] == "interrupted" and "SIGKILL" in data["error"]
    assert client.get_run(run.info.run_id).info.status == "KILLED"
    assert board(uri)[1] == {"interrupted": {data["run_uid"]}}

    (tmp_path / "killed.go").touch()  # the resumed run passes its pause point
    proc = cli(tmp_path, f"resume={tmp_path / 'killed'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed, reference = record(tmp_path, "killed"), record(tmp_path, "whole")
    assert resumed["status"] == "ok" and resumed["resumed"] == 1
    assert resumed["mlflow"]["run_id"] == run.info.run_id  # the same MLflow run, continued
    for key in ("test/acc", "test/loss", "val/acc", "sparsity/actual", "train/samples",
                "flops/train", "flops/sparse", "params/nonzero"):  # fmt: skip
        assert resumed["metrics"][key] == reference["metrics"][key], key
    assert resumed["history"] == reference["history"]
    final = masks(tmp_path / "killed/checkpoints/last.ckpt")
    expected = masks(tmp_path / "whole/checkpoints/last.ckpt")
    assert final.keys() == expected.keys() and all(
        torch.equal(final[k], expected[k]) for k in final
    )
    run = client.get_run(run.info.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["sparsebench.status"] == "ok"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [0, 1, 2]
    ranked, left = board(uri)
    assert ranked == {resumed["run_uid"], reference["run_uid"]} and not left
    # A finished run is not resumed again.
    proc = cli(tmp_path, f"resume={tmp_path / 'killed'}")
    assert proc.returncode == 2 and proc.stderr.startswith("error: run folder ")
    assert "already finished ok" in proc.stderr and "Traceback" not in proc.stderr


def test_kill_9_between_epochs_and_while_latency_is_measured(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    between = start(
        tmp_path, "between", pause(tmp_path, "between", hook="train_epoch_start", epoch=1)
    )
    latency = start(tmp_path, "latency", "hardware.min_run_time=2")  # seconds of timing
    deadline = time.time() + 240  # `between` waits at its pause meanwhile
    results = tmp_path / "latency/results.json"
    while "flops/sparse" not in (json.loads(results.read_text()) if results.exists() else {}).get(
        "metrics", {}
    ):
        assert latency.poll() is None and time.time() < deadline, "latency run ended early"
        time.sleep(0.02)
    kill(latency)  # tested and counted, now timing its kernels
    reach(tmp_path, "between", between)
    kill(between)

    data = record(tmp_path, "between")
    assert [row["epoch"] for row in data["history"]] == [0]
    checkpoint = torch.load(tmp_path / "between/checkpoints/last.ckpt", weights_only=True)
    assert checkpoint["epoch"] == 0  # the last good checkpoint is whole
    assert_identifiable(data, mlflow_run(data)[1])

    data = record(tmp_path, "latency")  # tested and FLOPs counted, killed while timing
    assert "test/acc" in data["metrics"] and "latency/p50_ms" not in data["metrics"]
    client, run = mlflow_run(data)
    assert_identifiable(data, run)  # not FINISHED: the contract is incomplete
    ranked, left = board(uri)
    assert not ranked and left == {"running": {record(tmp_path, n)["run_uid"]
                                               for n in ("between", "latency")}}  # fmt: skip

    # Resuming the half-measured run trains nothing more and completes the contract.
    proc = cli(tmp_path, f"resume={tmp_path / 'latency'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    done = record(tmp_path, "latency")
    assert done["status"] == "ok" and set(CONTRACT_METRICS) <= done["metrics"].keys()
    assert done["metrics"]["test/acc"] == data["metrics"]["test/acc"]
    assert done["metrics"]["train/samples"] == data["metrics"]["train/samples"]
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
    assert board(uri)[0] == {done["run_uid"]}


def test_sigterm_ends_the_run_as_interrupted_with_exit_143(tmp_path: Path) -> None:
    proc = start(tmp_path, "term", pause(tmp_path, "term", epoch=1, batch=2))
    reach(tmp_path, "term", proc)
    proc.send_signal(signal.SIGTERM)
    (tmp_path / "term.go").touch()  # the batch ends; the run stops there
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    stderr = proc.stderr.read()
    assert f"resume={tmp_path / 'term'}" in stderr and "Traceback" not in stderr
    data = record(tmp_path, "term")
    assert (
        data["status"] == "interrupted"
        and data["error"] == "RunInterrupted: interrupted by SIGTERM"
    )
    assert [row["epoch"] for row in data["history"]] == [0]
    client, run = mlflow_run(data)
    assert run.info.status == "KILLED" and run.data.tags["sparsebench.status"] == "interrupted"
    assert board(f"sqlite:///{tmp_path}/mlflow.db") == (set(), {"interrupted": {data["run_uid"]}})
    assert torch.load(tmp_path / "term/checkpoints/last.ckpt", weights_only=True)["epoch"] == 0


@pytest.fixture
def server(tmp_path: Path):
    """A restartable ``mlflow server`` on loopback with an SQLite backend in tmp_path."""
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    procs: list[subprocess.Popen] = []

    def up() -> None:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1",
             "--port", str(port), "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
             "--artifacts-destination", str(tmp_path / "artifacts"), "--workers", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        procs.append(proc)
        wait_until_healthy(uri, proc, timeout=120)

    def down() -> None:
        os.killpg(procs[-1].pid, signal.SIGKILL)
        procs[-1].wait(timeout=60)

    up()
    yield uri, up, down
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_tracking_server_killed_mid_run_then_upload_completes_it(tmp_path: Path, server) -> None:
    uri, up, down = server
    proc = start(tmp_path, "outage", pause(tmp_path, "outage", epoch=1, batch=1), uri=uri)
    reach(tmp_path, "outage", proc)
    down()
    (tmp_path / "outage.go").touch()
    assert proc.wait(timeout=300) == 0
    printed = proc.stdout.read() + proc.stderr.read()  # Hydra logs warnings to stdout
    assert f"sparsebench upload {tmp_path / 'outage'}" in printed
    data = record(tmp_path, "outage")
    assert data["status"] == "ok" and set(CONTRACT_METRICS) <= data["metrics"].keys()
    assert len(data["history"]) == 3  # nothing computed was lost to the outage

    # A dead server: one sentence within seconds, for upload and leaderboard alike.
    began = time.time()
    failed = cli(tmp_path, "upload", str(tmp_path / "outage"), "--tracking-uri", uri, timeout=60)
    assert failed.returncode == 1 and time.time() - began < 30
    assert failed.stderr.startswith(f"error: tracking server {uri} cannot be reached")
    assert "Traceback" not in failed.stderr
    from sparsebench.leaderboard.cli import main as leaderboard

    began = time.time()
    assert leaderboard(["--tracking-uri", uri]) == 1 and time.time() - began < 15

    up()
    client = MlflowClient(tracking_uri=uri)
    before = client.get_run(data["mlflow"]["run_id"])
    assert before.info.status == "RUNNING" and len(before.data.params) > 50  # sent at start
    code, printed = upload(str(tmp_path / "outage"), "--tracking-uri", uri)
    assert code == 0 and "\ncompleted: " in f"\n{printed}", printed
    after = client.get_run(data["mlflow"]["run_id"])
    assert after.info.status == "FINISHED" and after.data.tags["sparsebench.status"] == "ok"
    assert {k: after.data.metrics[k] for k in CONTRACT_METRICS} == {
        k: data["metrics"][k] for k in CONTRACT_METRICS
    }
    history = client.get_metric_history(after.info.run_id, "train/loss")
    assert sorted({m.step for m in history}) == [0, 1, 2]
    assert {a.path for a in client.list_artifacts(after.info.run_id)} >= {
        "results.json",
        "config.yaml",
    }
    code, printed = upload(str(tmp_path / "outage"), "--tracking-uri", uri)
    assert code == 0 and printed.startswith("already complete: "), printed
    assert len(client.search_runs([after.info.experiment_id])) == 1
    assert board(uri) == ({data["run_uid"]}, {})


def test_full_disk_keeps_the_last_good_checkpoint_and_records_the_failure(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    # From epoch 1 on, no file may grow past 64 kB: the next checkpoint and MLflow's database
    # cannot be written, results.json (a few kB) still can.
    proc = start(tmp_path, "full", pause(tmp_path, "full", hook="train_epoch_start", epoch=1,
                                         fsize=64_000))  # fmt: skip
    # ... and one where not even the failed status can be written (1 kB from the start).
    tiny = start(tmp_path, "tiny", pause(tmp_path, "tiny", hook="train_epoch_start", epoch=0,
                                         fsize=1_000))  # fmt: skip
    proc.wait(timeout=300)
    assert proc.returncode == 1
    data = record(tmp_path, "full")
    assert data["status"] == "failed" and data["error"].startswith(
        "OSError: could not write checkpoint"
    )
    assert [row["epoch"] for row in data["history"]] == [0, 1]  # epoch 1 was trained and kept
    checkpoints = sorted(p.name for p in (tmp_path / "full/checkpoints").iterdir())
    assert checkpoints == ["last.ckpt"]  # no temporary file left behind
    assert torch.load(tmp_path / "full/checkpoints/last.ckpt", weights_only=True)["epoch"] == 0
    # MLflow's database could not take the end of the run; upload completes it afterwards.
    client, run = mlflow_run(data)
    assert run.info.status == "RUNNING"
    assert upload(str(tmp_path / "full"), "--tracking-uri", uri)[0] == 0
    run = client.get_run(run.info.run_id)
    assert run.info.status == "FAILED" and run.data.tags["sparsebench.status"] == "failed"

    # When not even the failed status can be written, stderr says so.
    tiny.wait(timeout=300)
    stderr = tiny.stderr.read()
    assert tiny.returncode != 0
    assert f"error: could not write {tmp_path / 'tiny' / 'results.json'}" in stderr
    assert "final status 'failed'" in stderr
    unrecorded = record(tmp_path, "tiny")  # as it was when the disk filled up: still running
    assert unrecorded["status"] == "running"
    assert board(uri) == (set(), {"failed": {data["run_uid"]}, "running": {unrecorded["run_uid"]}})


def test_a_diverging_run_ends_as_diverged_and_never_ranks(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    proc = cli(tmp_path, *RUN, "trainer.optimizer.lr=inf", f"hydra.run.dir={tmp_path / 'nan'}",
               f"logger.tracking_uri={uri}")  # fmt: skip
    assert proc.returncode == 1 and "diverged: the training loss is nan at step " in proc.stderr
    assert "Traceback" not in proc.stderr
    data = record(tmp_path, "nan")
    assert data["status"] == "diverged" and "test/acc" not in data["metrics"]
    client, run = mlflow_run(data)
    assert run.info.status == "FAILED" and run.data.tags["sparsebench.status"] == "diverged"
    assert board(uri) == (set(), {"diverged": {data["run_uid"]}})


def test_a_diverging_study_fails_its_trials_everywhere_and_stops(
    tmp_path: Path, monkeypatch
) -> None:
    import optuna
    import yaml

    from sparsebench.errors import ConfigError
    from sparsebench.search.worker import Worker
    from tests.fixtures import search_in_process

    study = {"overrides": ["model=mlp", "dataset=digits", "debug=fast", "+method=random",
                           "trainer.optimizer.lr=inf"],
             "space": {"method.sparsity": {"type": "float", "low": 0.3, "high": 0.9}},
             "objectives": [{"metric": "val/acc", "direction": "maximize"}],
             "sampler": {"name": "random", "seed": 0}, "n_trials": 5}  # fmt: skip
    (tmp_path / "nan.yaml").write_text(yaml.safe_dump(study))
    worker = Worker(*search_in_process([f"sweep={tmp_path / 'nan.yaml'}", "max_failures=2"],
                                       tmp_path, monkeypatch))  # fmt: skip
    with pytest.raises(ConfigError, match="2 trials in a row failed in study 'nan'; the last: "
                                          "RunDiverged: the training loss is nan"):  # fmt: skip
        worker.run()
    trials = optuna.load_study(study_name="nan", storage=f"sqlite:///{tmp_path}/optuna.db").trials
    assert [t.state.name for t in trials] == ["FAIL", "FAIL"]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    for trial in trials:
        data = json.loads((Path(trial.user_attrs["run_dir"]) / "results.json").read_text())
        assert data["status"] == "diverged"
        assert client.get_run(data["mlflow"]["run_id"]).info.status == "FAILED"


# -- labels and numbers (in-process) ---------------------------------------------------------


@pytest.mark.parametrize("name", ["nm", "sr_ste", "pgf"])
def test_n_m_methods_are_tagged_with_their_pattern(make_cfg, name: str) -> None:
    from sparsebench.training.build import build_method

    assert build_method(make_cfg(f"+method={name}")).pattern_tag == "2:4"
    assert build_method(make_cfg(f"+method={name}", "method.pattern=1:8")).pattern_tag == "1:8"


def test_a_2_4_run_is_tagged_2_4_everywhere(make_cfg, tmp_path: Path) -> None:
    from sparsebench.leaderboard.read import read_runs
    from sparsebench.runners.train import run

    run(make_cfg("model=mlp", "dataset=digits", "+method=sr_ste"))
    data = json.loads((tmp_path / "run/results.json").read_text())
    assert data["tags"]["pattern"] == "2:4"
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert [r["tags"]["pattern"] for r in read_runs(uri, None, {"pattern": "2:4"})] == ["2:4"]
    assert read_runs(uri, None, {"pattern": "unstructured"}) == []


def test_methods_of_the_other_runner_and_contract_tags_are_refused(make_cfg, tmp_path) -> None:
    from sparsebench.errors import ConfigError
    from sparsebench.runners import prune, train

    with pytest.raises(ConfigError, match="method 'wanda' prunes a trained model: run it with "
                                          "runner=prune"):  # fmt: skip
        train.run(make_cfg("+method=wanda"))
    with pytest.raises(ConfigError, match="runner 'prune' needs a post-training method"):
        prune.run(make_cfg("runner=prune", "+method=rigl"))
    for tag in ("method", "run_hash", "benchmark_key", "pattern"):
        with pytest.raises(ConfigError, match=f"tags.{tag} is set by sparsebench"):
            train.run(make_cfg(f"+tags.{tag}=x"))
    assert not (tmp_path / "run").exists()  # refused before anything was recorded


def test_history_rows_hold_their_own_epoch_and_share_mlflow_s_step_axis(make_cfg, tmp_path) -> None:
    import lightning as L

    from sparsebench.record.upload import main as upload
    from sparsebench.runners.train import run

    class Losses(L.Callback):  # the ground truth: every batch's loss and size, per epoch
        def __init__(self) -> None:
            self.sums: dict[int, list[float]] = {}

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            total = self.sums.setdefault(trainer.current_epoch, [0.0, 0.0])
            total[0] += float(outputs["loss"]) * len(batch[1])
            total[1] += len(batch[1])

    losses = Losses()
    run(make_cfg("model=mlp", "dataset=digits", "trainer.max_epochs=3"), callbacks=[losses])
    data = json.loads((tmp_path / "run/results.json").read_text())
    assert [row["epoch"] for row in data["history"]] == [0, 1, 2]  # every epoch, the last too
    for row in data["history"]:
        total, count = losses.sums[row["epoch"]]
        assert row["train/loss"] == pytest.approx(total / count, rel=1e-5)  # its own epoch's
        assert {"train/acc", "val/acc", "val/loss"} <= row.keys()
    live = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    other = f"sqlite:///{tmp_path}/uploaded.db"
    assert upload([str(tmp_path / "run"), "--tracking-uri", other]) == 0
    uploaded = MlflowClient(tracking_uri=other)
    (copy,) = uploaded.search_runs([uploaded.get_experiment_by_name("sparsebench").experiment_id])

    def curve(client, run_id: str, key: str) -> list[tuple[int, float]]:
        return sorted({(m.step, m.value) for m in client.get_metric_history(run_id, key)})

    for key in ("train/loss", "val/acc"):  # the same points live and uploaded
        assert curve(live, data["mlflow"]["run_id"], key) == curve(uploaded, copy.info.run_id, key)
    # The contract's val/acc is the last epoch's point, not a new one at step 0.
    assert curve(live, data["mlflow"]["run_id"], "val/acc") == [
        (row["epoch"], pytest.approx(row["val/acc"])) for row in data["history"]
    ]


def test_sparse_ift_training_flops_use_the_widened_network(make_cfg, tmp_path: Path) -> None:
    from sparsebench.metrics.flops import flops_per_sample
    from sparsebench.runners.train import run
    from sparsebench.training.build import (
        build_datamodule,
        build_method,
        build_run_model,
        build_transform,
    )

    cfg = make_cfg("model=mlp", "dataset=digits", "+method=sparse_ift", "method.update_interval=2")
    metrics = run(cfg).metrics
    method = build_method(cfg)
    datamodule = build_datamodule(cfg, check=True)
    example = datamodule.example_input(1)
    wide = build_run_model(cfg, datamodule, method, build_transform(cfg, method))
    f_wide = flops_per_sample(wide, example)["flops/dense"]  # RigL's dense gradient is on this
    f_s, samples, dt = metrics["flops/sparse"], metrics["train/samples"], 2
    # Sparse-IFT's RigL accounting (docs/methods.md): 3 f_s per step, a dense gradient every dT.
    assert metrics["flops/train"] == pytest.approx(
        samples * (3 * f_s * dt + 2 * f_s + f_wide) / (dt + 1)
    )
    assert f_wide > 1.1 * metrics["flops/dense"]  # flops/dense stays the original's (iso-FLOP)


def test_a_preempted_submitit_job_is_requeued_and_resumes(tmp_path: Path) -> None:
    # SLURM preemption as submitit delivers it (USR2 to the job): submitit checkpoints the
    # Hydra launcher's job and requeues it into the same job folder, which resumes the run.
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = ["-m", *RUN, pause(tmp_path, "job", epoch=1, batch=1), "hydra/launcher=submitit_local",
            f"hydra.sweep.dir={tmp_path / 'sweep'}", f"logger.tracking_uri={uri}"]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "sparsebench", *args], cwd=tmp_path, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    reach(tmp_path, "job", proc)
    os.kill(int((tmp_path / "job.at").read_text()), signal.SIGUSR2)
    (tmp_path / "job.go").touch()  # the requeued job passes the pause
    assert proc.wait(timeout=400) == 0, proc.stderr.read()[-3000:]
    data = record(tmp_path, "sweep/0")
    assert data["status"] == "ok" and data["resumed"] == 1
    assert [row["epoch"] for row in data["history"]] == [0, 1, 2]
    client, run = mlflow_run(data)
    assert run.info.status == "FINISHED" and run.data.tags["sparsebench.status"] == "ok"
    jobs = [r for r in client.search_runs([run.info.experiment_id]) if "run_hash" in r.data.tags]
    assert [r.info.run_id for r in jobs] == [run.info.run_id]  # one record, continued
    logs = "".join(p.read_text() for p in (tmp_path / "sweep/.submitit").rglob("*.err"))
    assert "this job is preempted" in logs and "Restored all states from the checkpoint" in logs
