"""The fixtures every test may ask for by name (defined in tests/fixtures.py)."""

from tests.fixtures import make_cfg, own_cache, pg_database  # noqa: F401
