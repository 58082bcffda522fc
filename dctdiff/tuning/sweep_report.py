"""A sweep's outcome: one row per trial (values, best FID, steps, status) from Ray Tune's results and the
trials' MLflow child runs, as a CSV, a printed table and the best trial's config file."""

from __future__ import annotations

import csv
import io
import math
import posixpath
from dataclasses import dataclass
from typing import Any

from dctdiff.infra.mlflow_runs import RunHandle
from dctdiff.models.config import TrainConfig

SWEEP_TAG = "dctdiff.sweep"
TRIAL_TAG = "dctdiff.trial"
STOPPED_TAG = "dctdiff.stopped_early"
MAX_CHILD_RUNS = 50_000  # MLflow's largest search page


@dataclass
class TrialRow:
    """One trial of a sweep. ``status``: finished (trained max steps), stopped (by ASHA), error, or
    unfinished (the sweep was interrupted before it ended; ``--resume`` continues it)."""

    trial: str
    values: dict[str, Any]
    best_fid: float
    best_fid_step: int | None
    steps: int
    status: str
    run_id: str


def child_runs(tracking_uri: str, parent_run_id: str) -> dict[str, Any]:
    """The MLflow runs of a sweep's trials (children of ``parent_run_id``), by Tune trial id."""
    runs = RunHandle(tracking_uri, parent_run_id).child_runs(MAX_CHILD_RUNS)
    return {run.data.tags[TRIAL_TAG]: run for run in runs if TRIAL_TAG in run.data.tags}


def _best_fid(tracking_uri: str, run: Any | None) -> tuple[float, int | None]:
    """Lowest FID a run logged and its step ((nan, None) before the first report)."""
    if run is None:
        return math.nan, None
    history = RunHandle(tracking_uri, run.info.run_id).metric_history("fid")
    if not history:
        return math.nan, None
    best = min(history, key=lambda m: m.value)
    return best.value, best.step


def trial_rows(results: Any, max_steps: int, tracking_uri: str, parent_run_id: str) -> list[TrialRow]:
    """Rows of a Tune ResultGrid (trial directories named by trial id), best FID first."""
    runs = child_runs(tracking_uri, parent_run_id)
    rows = []
    for result in results:
        trial = posixpath.basename(str(result.path).rstrip("/"))
        steps = int(result.metrics.get("step", 0))
        if result.error is not None:
            status = "error"
        elif steps >= max_steps:
            status = "finished"
        elif result.metrics.get("done"):
            status = "stopped"
        else:
            status = "unfinished"
        run = runs.get(trial)
        best, best_step = _best_fid(tracking_uri, run)
        rows.append(
            TrialRow(trial, dict(result.config), best, best_step, steps, status, run.info.run_id if run else "")
        )
    return sorted(rows, key=lambda r: (math.isnan(r.best_fid), r.best_fid, r.trial))


def _columns(rows: list[TrialRow]) -> list[str]:
    keys = sorted({k for r in rows for k in r.values})
    return ["trial", *keys, "best_fid", "best_fid_step", "steps", "status", "mlflow_run_id"]


def _record(row: TrialRow) -> dict[str, Any]:
    return {
        "trial": row.trial,
        **row.values,
        "best_fid": row.best_fid,
        "best_fid_step": "" if row.best_fid_step is None else row.best_fid_step,
        "steps": row.steps,
        "status": row.status,
        "mlflow_run_id": row.run_id,
    }


def rows_csv(rows: list[TrialRow]) -> str:
    """The result table as CSV text (one line per trial, best FID first)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=_columns(rows), lineterminator="\n")
    writer.writeheader()
    writer.writerows(_record(r) for r in rows)
    return buffer.getvalue()


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4g}"
    return str(value) if value != "" else "-"


def format_table(rows: list[TrialRow]) -> str:
    """The result table aligned for the terminal."""
    columns = [c for c in _columns(rows) if c != "mlflow_run_id"]
    cells = [columns] + [[_cell(_record(r)[c]) for c in columns] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in cells)


def best_config_yaml(config: TrainConfig, row: TrialRow, sweep: str, fid_samples: int, nfe: int) -> str:
    """The best trial's config as a file for ```dctdiff train` --config`` (with a comment header)."""
    values = ", ".join(f"{k}={_cell(v)}" for k, v in sorted(row.values.items()))
    header = (
        f"# Best trial {row.trial} of sweep {sweep}: {values}\n"
        f"# FID {row.best_fid:.4g} at step {row.best_fid_step} ({fid_samples} samples, {nfe} NFE); MLflow run {row.run_id}\n"
        f"# Train with it: dctdiff train --preset {config.preset} --config best_config.yaml --data DATA\n"
    )
    return header + config.to_yaml()
