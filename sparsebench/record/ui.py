"""The MLflow UI: the experiment tags that open sparsebench's runs views, one per task, and
links to an experiment's or a run's page."""

from __future__ import annotations

import json
from typing import Any

from sparsebench.config.store import Store
from sparsebench.record.contract import DIRECTIONS, MINIMIZE, RANKED_BY

# The experiment kind MLflow 3's UI reads (custom_model_development: model training, not GenAI).
# MLflow 3.17's UI still starts in its GenAI mode in a fresh browser: the links sparsebench
# prints carry ?workflowType=machine_learning, which opens the model-training view.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
# A view of the runs table that every sparsebench experiment carries (MLflow's "shared view":
# an experiment tag mlflow.sharedViewState.KEY holding the view as JSON, opened by
# ?viewStateShareKey=KEY), one per task: the contract's main metrics as columns, the best
# quality first in its declared direction (highest accuracy; lowest perplexity). Sorting by a
# metric also lists a sweep's jobs beside its parent rather than folded under it.
VIEW_KEYS = {"classification": "sparsebench", "language_modeling": "sparsebench-lm"}


def _view(task: str) -> dict[str, Any]:
    quality = RANKED_BY[task]
    columns = [
        *(
            f"metrics.`{m}`"
            for m in (
                quality,
                "sparsity/actual",
                "flops/sparse",
                "latency/p50_ms",
                "speedup/measured",
            )
        ),
        "tags.`pattern`",
        "tags.`benchmark_key`",
    ]
    return {
        "selectedColumns": columns,
        "columnOrder": columns,
        "orderByKey": f"metrics.`{quality}`",
        "orderByAsc": DIRECTIONS[quality] == MINIMIZE,
    }


EXPERIMENT_TAGS = {
    **EXPERIMENT_KIND,
    **{f"mlflow.sharedViewState.{key}": json.dumps(_view(t)) for t, key in VIEW_KEYS.items()},
}


def ui_page(experiment: str, run_id: str | None = None, task: str = "classification") -> str:
    """The MLflow UI's page (after the server's address) of a run, or of the experiment's runs
    table in sparsebench's view. MLflow 3.17's UI starts in its GenAI mode in a fresh browser
    whatever the experiment's tags say; ``workflowType`` opens the model-training view."""
    if run_id is not None:
        return f"#/experiments/{experiment}/runs/{run_id}?workflowType=machine_learning"
    return f"#/experiments/{experiment}/runs?viewStateShareKey={VIEW_KEYS[task]}&workflowType=machine_learning"


def ui_link(
    tracking_uri: str, experiment: str, run_id: str | None = None, task: str = "classification"
) -> str:
    """Where to browse :func:`ui_page`: the URL on a tracking server, else how to start the UI
    on the store and the URL then."""
    page = ui_page(experiment, run_id, task)
    if Store.of(tracking_uri).http:
        return f"{tracking_uri.rstrip('/')}/{page}"
    return f"mlflow ui --backend-store-uri {tracking_uri}, then http://127.0.0.1:5000/{page}"
