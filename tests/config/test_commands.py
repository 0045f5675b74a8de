"""The command lines' own options (search, reproduce, leaderboard, upload) and composition
errors: every bad input is one sentence, exit 2."""

from __future__ import annotations

import pytest

from sparsebench.config.checks import validate
from sparsebench.errors import ConfigError


def test_bad_leaderboard_and_upload_arguments_are_one_sentence(tmp_path, capsys) -> None:
    from sparsebench.leaderboard.cli import main as leaderboard
    from sparsebench.record.upload import main as upload

    store = tmp_path / "mlflow.db"
    store.touch()
    uri = f"sqlite:///{store}"
    cases = [
        (
            leaderboard,
            ["--tracking-uri", "garbage://x"],
            "error: --tracking-uri must start with one of sqlite,",
        ),
        (
            leaderboard,
            ["--tracking-uri", f"sqlite:///{tmp_path}/none/x.db"],
            f"error: --tracking-uri sqlite:///{tmp_path}/none/x.db: no such database file",
        ),
        (
            leaderboard,
            ["--tracking-uri", uri, "--max-sparsity", "nan"],
            "error: --max-sparsity must be in [0, 1], got nan.",
        ),
        (
            leaderboard,
            ["--tracking-uri", uri, "--html", str(tmp_path / "no/board.html")],
            f"error: --html {tmp_path}/no/board.html: folder {tmp_path}/no does not exist.",
        ),
        (
            upload,
            [str(store)],
            f"error: {store} is not a sparsebench results.json (no (UnicodeDecodeError",
        ),
    ]
    (tmp_path / "results.json").write_text('{"run_uid": "x"}')
    cases.append(
        (
            upload,
            [str(tmp_path)],
            f"error: {tmp_path}/results.json is not a sparsebench results.json (no started, tags, metrics); nothing was uploaded.",
        )
    )
    store.write_bytes(b"\xff\xfe not json")
    for main, args, message in cases:
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert err.startswith(message) and err.count("\n") == 1, (args, err)
    assert not (tmp_path / "none").exists()  # reading never creates a database
    # User text never becomes an MLflow filter string: a quote is just a character.
    store.unlink()
    from mlflow import MlflowClient

    MlflowClient(tracking_uri=uri).create_experiment("e")
    assert leaderboard(["--tracking-uri", uri, "--method", "x'y"]) == 1
    assert "no complete ok runs" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["trainer.max_epochs=abc"],
            "trainer.max_epochs=abc: Value 'abc' of type 'str' could not be converted to Integer.",
        ),
        (["seed=abc"], "seed=abc: Value 'abc' of type 'str' could not be converted to Integer."),
        (
            ["trainer.optimizer.lr="],
            "trainer.optimizer.lr=: Value '' of type 'str' could not be converted to Float.",
        ),
        (
            ["trainer.max_epoch=3"],
            "unknown key 'trainer.max_epoch'; trainer takes: max_epochs, optimizer,",
        ),
    ],
)
def test_hydra_composition_errors_are_one_sentence(args: list[str], message: str) -> None:
    from sparsebench.config.checks import check_composition

    with pytest.raises(ConfigError) as error:
        check_composition(args, "config")
    assert str(error.value).startswith(message)
    check_composition(["trainer.max_epochs=2", "+method=random"], "config")  # a valid run passes
    check_composition(["--cfg", "job", "seed=abc"], "config")  # flags: left to Hydra


def test_multirun_composition_errors_are_one_sentence() -> None:
    from sparsebench.config.checks import check_composition

    check_composition(["-m", "+method=rigl,set", "method.sparsity=0.5,0.9"], "config")
    with pytest.raises(ConfigError, match="^trainer.max_epochs=x: Value 'x' of type 'str'"):
        check_composition(["-m", "seed=0,1", "trainer.max_epochs=1,x"], "config")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["sweep=tpe_rigl", "n_trials=abc"],
            "n_trials=abc: Value 'abc' of type 'str' could not be converted to Integer.",
        ),
        (
            ["sweep=tpe_rigl", "heartbeat_interval=0"],
            "heartbeat_interval must be >= 1 (seconds), got 0.",
        ),
        (["sweep=tpe_rigl", "workers=-1"], "workers must be in [1, 256], got -1."),
        (
            ["sweep=tpe_rigl", "grace_period=5"],
            "grace_period must be longer than heartbeat_interval (10), got 5.",
        ),
        (
            ["sweep=tpe_rigl", "worker_count=2"],
            "unknown key 'worker_count'; the top level takes: sweep, n_trials,",
        ),
    ],
)
def test_search_options_are_one_sentence(args: list[str], message: str) -> None:
    from sparsebench.config.checks import check_composition
    from sparsebench.config.compose import compose

    try:
        check_composition(args, "search")  # composition errors
    except ConfigError as error:
        assert str(error).startswith(message)
        return
    cfg = compose(args, "search")
    with pytest.raises(ConfigError) as error:  # range errors: the search entry validates them
        validate(cfg)
    assert str(error.value).startswith(message)


def test_leaderboard_and_upload_commands_exit_2_with_one_sentence(tmp_path) -> None:
    import subprocess
    import sys

    for args, message in [
        (["leaderboard", "--tracking-uri", "ftp://x"], "error: --tracking-uri must start with"),
        (["upload", str(tmp_path)], f"error: {tmp_path} holds no results.json."),
    ]:
        proc = subprocess.run(
            [sys.executable, "-m", "sparsebench", *args],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )
        assert proc.returncode == 2 and proc.stderr.startswith(message), proc.stderr[-500:]
        assert "Traceback" not in proc.stderr


def test_an_unreadable_sweep_file_is_one_sentence(tmp_path) -> None:
    from sparsebench.search.spec import load_spec

    (tmp_path / "bad.yaml").write_text("::: not: [yaml")
    with pytest.raises(ConfigError, match=f"^sweep file {tmp_path}/bad.yaml cannot be read"):
        load_spec(str(tmp_path / "bad.yaml"))
