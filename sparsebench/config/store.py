"""An MLflow store's address (a tracking URI), parsed in one place: its scheme, whether it is a
database that MLflow writes itself or a tracking server, and the file of an SQLite store."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sparsebench.errors import ConfigError

DEFAULT_URI = "sqlite:///mlflow.db"
DATABASE_SCHEMES = ("sqlite", "postgresql", "postgresql+psycopg2", "mysql")
SERVER_SCHEMES = ("http", "https", "databricks")
# In the order the error sentence has always listed them.
TRACKING_SCHEMES = (
    "sqlite",
    "http",
    "https",
    "postgresql",
    "postgresql+psycopg2",
    "mysql",
    "databricks",
)


@dataclass(frozen=True)
class Store:
    """A tracking URI taken apart; ``kind`` is ``database``, ``server``, or None for a scheme
    sparsebench does not know (MLflow may still, e.g. ``$MLFLOW_TRACKING_URI=file:...``)."""

    uri: str
    scheme: str
    kind: str | None

    @classmethod
    def of(cls, uri: str) -> Store:
        scheme = uri.split(":", 1)[0] if ":" in uri else ""
        kind = "database" if scheme in DATABASE_SCHEMES else None
        kind = "server" if scheme in SERVER_SCHEMES else kind
        return cls(uri, scheme, kind)

    @property
    def database(self) -> bool:
        return self.kind == "database"

    @property
    def http(self) -> bool:
        """A tracking server at an http(s) address: it answers ``/health`` and serves the UI."""
        return self.scheme in ("http", "https") and self.uri.startswith(f"{self.scheme}://")

    @property
    def path(self) -> Path | None:
        """The database file of an ``sqlite:///FILE`` store, as given (maybe relative)."""
        if self.scheme == "sqlite" and self.uri.startswith("sqlite:///"):
            return Path(self.uri.removeprefix("sqlite:///"))
        return None


def parse_store(uri: str, name: str = "logger.tracking_uri") -> Store:
    """``uri`` taken apart, or ConfigError naming the option ``name`` when its scheme is not
    one of an MLflow store's."""
    store = Store.of(uri)
    if store.kind is None:
        raise ConfigError(
            f"{name} must start with one of {', '.join(TRACKING_SCHEMES)} (an MLflow store), "
            f"got '{uri}'."
        )
    return store
