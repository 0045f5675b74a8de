"""Puts sparsebench's ``sweeps/`` folder on Hydra's config search path.

Hydra discovers plugins in the ``hydra_plugins`` namespace package; this is its documented way
to add config folders without passing ``--config-dir`` on every command.
"""

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

from sparsebench.config.resources import SWEEPS_DIR


class SparsebenchSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        search_path.append(provider="sparsebench-sweeps", path=f"file://{SWEEPS_DIR}")
