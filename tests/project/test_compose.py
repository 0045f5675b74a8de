"""docker-compose.yml validated by Debian's docker-compose (`config` checks it against the Compose
schema without a Docker engine; none runs on these machines). The services themselves run
natively in tests/record/test_team_server.py."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.fixtures import REPO

SECRETS = {
    "POSTGRES_PASSWORD": "pg-secret-1",
    "MLFLOW_ADMIN_PASSWORD": "mlflow-secret-2",
    "MLFLOW_SECRET_KEY": "csrf-key-3",
}


def _config(compose_file: Path, env_file: Path | None = None) -> subprocess.CompletedProcess:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose is not installed (make test installs Debian's docker-compose)")
    return subprocess.run(
        [
            exe,
            "-f",
            str(compose_file),
            "--env-file",
            str(env_file or REPO / ".env.example"),
            "config",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=compose_file.parent,
    )


def _env(tmp_path: Path, **overrides: str) -> Path:
    """.env.example with the passwords a user must set, and ``overrides``."""
    lines = (REPO / ".env.example").read_text().splitlines()
    values = {**SECRETS, **overrides}
    out = [
        f"{line.split('=')[0]}={values[line.split('=')[0]]}"
        if "=" in line and line.split("=")[0] in values
        else line
        for line in lines
    ]
    path = tmp_path / ".env"
    path.write_text("\n".join(out) + "\n")
    return path


def test_compose_file_is_valid_and_wires_one_database(tmp_path: Path) -> None:
    proc = _config(REPO / "docker-compose.yml", _env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    services = yaml.safe_load(proc.stdout)["services"]
    assert set(services) == {"postgres", "mlflow", "optuna-dashboard"}
    env = services["postgres"]["environment"]
    database = (
        f"postgresql+psycopg2://{env['POSTGRES_USER']}:{env['POSTGRES_PASSWORD']}"
        f"@postgres:5432/{env['POSTGRES_DB']}"
    )
    assert services["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"] == database
    assert services["optuna-dashboard"]["environment"]["OPTUNA_STORAGE"] == database  # the same
    for name in ("mlflow", "optuna-dashboard"):
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_compose_is_closed_by_default(tmp_path: Path) -> None:
    services = yaml.safe_load(_config(REPO / "docker-compose.yml", _env(tmp_path)).stdout)[
        "services"
    ]
    # Published on loopback only; BIND_ADDRESS opens PostgreSQL and MLflow, never the dashboard.
    for service in services.values():
        assert all(str(port).startswith("127.0.0.1:") for port in service["ports"]), service
    opened = _config(REPO / "docker-compose.yml", _env(tmp_path, BIND_ADDRESS="0.0.0.0"))
    ports = {n: s["ports"] for n, s in yaml.safe_load(opened.stdout)["services"].items()}
    assert ports["mlflow"][0].startswith("0.0.0.0:") and ports["postgres"][0].startswith("0.0.0.0:")
    assert ports["optuna-dashboard"][0].startswith("127.0.0.1:")
    # MLflow asks for a user (its basic-auth app); the admin password comes from the environment.
    mlflow = services["mlflow"]
    assert mlflow["command"][:4] == ["mlflow", "server", "--app-name", "basic-auth"]
    assert mlflow["environment"]["MLFLOW_AUTH_ADMIN_PASSWORD"] == SECRETS["MLFLOW_ADMIN_PASSWORD"]
    ini = (REPO / "docker/mlflow/basic_auth.ini").read_text()
    assert "authenticate_request_basic_auth" in ini and "admin_password" not in ini
    # No secret on any command line; images pinned to versions; nothing pip-installed at start.
    for name, service in services.items():
        line = " ".join([*service.get("command", []), *service.get("entrypoint", [])])
        assert not any(secret in line for secret in SECRETS.values()), name
        assert "pip install" not in line
        tag = service["image"].rsplit(":", 1)[1]
        assert tag != "latest" and any(c.isdigit() for c in tag), service["image"]
    dockerfile = (REPO / "docker/mlflow/Dockerfile").read_text()
    assert "FROM ghcr.io/mlflow/mlflow:v3.17.2" in dockerfile and "==" in dockerfile


@pytest.mark.parametrize(
    "missing", ["POSTGRES_PASSWORD", "MLFLOW_ADMIN_PASSWORD", "MLFLOW_SECRET_KEY"]
)
def test_compose_refuses_to_start_without_passwords(tmp_path: Path, missing: str) -> None:
    proc = _config(REPO / "docker-compose.yml", _env(tmp_path, **{missing: ""}))
    assert proc.returncode != 0 and f"set {missing} in .env" in proc.stderr
    bare = _config(REPO / "docker-compose.yml")  # .env.example copied unedited
    assert bare.returncode != 0 and "set POSTGRES_PASSWORD in .env" in bare.stderr


def test_compose_validation_rejects_a_broken_file(tmp_path: Path) -> None:
    # The checks above could pass on anything if `config` did not validate: it does.
    text = (
        (REPO / "docker-compose.yml")
        .read_text()
        .replace("    image: postgres:16.6-bookworm", "    imagee: postgres:16.6-bookworm")
    )
    (tmp_path / "docker-compose.yml").write_text(text)
    (tmp_path / "docker").mkdir()
    proc = _config(tmp_path / "docker-compose.yml", _env(tmp_path))
    assert proc.returncode != 0 and "imagee" in proc.stderr
