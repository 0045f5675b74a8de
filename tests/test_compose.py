"""docker-compose.yml validated by Debian's docker-compose (`config` checks it against the Compose
schema without a Docker engine; none runs on these machines). The services themselves run
natively in tests/test_team_server.py."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO


def _config(compose_file: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose is not installed (make test installs Debian's docker-compose)")
    return subprocess.run(
        [exe, "-f", str(compose_file), "--env-file", str(REPO / ".env.example"), "config"],
        capture_output=True, text=True, timeout=120, cwd=compose_file.parent,
    )  # fmt: skip


def test_compose_file_is_valid_and_wires_one_database() -> None:
    proc = _config(REPO / "docker-compose.yml")
    assert proc.returncode == 0, proc.stderr
    services = yaml.safe_load(proc.stdout)["services"]
    assert set(services) == {"postgres", "mlflow", "optuna-dashboard"}
    env = services["postgres"]["environment"]
    database = (f"postgresql+psycopg2://{env['POSTGRES_USER']}:{env['POSTGRES_PASSWORD']}"
                f"@postgres:5432/{env['POSTGRES_DB']}")  # fmt: skip
    mlflow = " ".join(services["mlflow"]["command"].split())
    assert f"--backend-store-uri {database}" in mlflow and "--serve-artifacts" in mlflow
    assert services["optuna-dashboard"]["command"].split()[0] == database  # the same database
    for name in ("mlflow", "optuna-dashboard"):
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_compose_validation_rejects_a_broken_file(tmp_path: Path) -> None:
    # The check above could pass on anything if `config` did not validate: it does.
    text = (
        (REPO / "docker-compose.yml")
        .read_text()
        .replace("    image: postgres:16", "    imagee: postgres:16")
    )
    (tmp_path / "docker-compose.yml").write_text(text)
    proc = _config(tmp_path / "docker-compose.yml")
    assert proc.returncode != 0 and "imagee" in proc.stderr
