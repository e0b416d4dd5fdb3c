"""`graphvla data stats`: the statistics of a dataset's numeric keys, or of a graph's state/action
ports exactly as training computes them, as a JSON document (printed, and written on request)."""
from __future__ import annotations

import json
from pathlib import Path

from ..fileio import write_text_atomic


def stats_report(dataset, keys: list[str] | None = None, spec=None) -> dict:
    """key -> mean/std, min/max, q01/q99 of DATASET's numeric KEYS (all of them by default); with a
    Spec, port -> the statistics training normalizes with (DATASET may then be a data YAML)."""
    if spec is not None:
        from .api import load_data

        return load_data(dataset, spec).stats
    from .api import open_source
    from .stats import compute_stats

    if Path(dataset).is_file():
        raise ValueError(f"{dataset} is a file: statistics of a data YAML need --spec SPEC (they are per graph port)")
    src = open_source(dataset)
    want = keys or list(src.columns)
    missing = [k for k in want if k not in src.columns]
    if missing:
        raise KeyError(f"{dataset}: no numeric key '{missing[0]}' (keys: {', '.join(src.columns)})")
    return {k: compute_stats(src.columns[k]) for k in want}


def format_report(report: dict) -> str:
    return json.dumps(report, indent=2)


def write_report(path, report: dict) -> None:
    write_text_atomic(path, format_report(report) + "\n")
