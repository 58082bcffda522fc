"""A sweep as a study: its trials grouped into arms, their FID and KID summarised over seeds, and curves.

An arm is one combination of the swept values other than ``cadence.seed``; its trials are the seeds.
From the sweep's MLflow child runs (params and metric histories) the report writes ``study.md`` (one
table row per arm: values, seeds, steps, final FID and KID (equal steps), FID and KID at the training time
every trial reached (equal wall-clock), best FID and wall-clock per run, each as mean ± standard deviation
over seeds; then whether each arm's final FID differs from the best arm's by more than their seed spreads)
``study_curves.png`` (FID and KID against step and against training minutes, the ``train_minutes`` the
worker loop logs: one colour per arm, a thin line per seed, a thick mean) and ``study_grids.png`` (each
arm's sample grid at its first seed's last FID step, side by side); docs/ARCHITECTURE.md, "Sweeps".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from dctdiff.evaluation.image_grid import captioned_pictures, figure_png, png_bytes
from dctdiff.infra import storage
from dctdiff.infra.mlflow_runs import RunHandle
from dctdiff.training.run_logger import GRID_KEY
from dctdiff.tuning.sweep_report import child_runs

SEED_KEY = "cadence.seed"
CURVE_METRICS = ("fid", "kid")
REPORT_FILE = "study.md"
CURVES_FILE = "study_curves.png"
GRIDS_FILE = "study_grids.png"


class Point(NamedTuple):
    """One logged value: its training step and the training minutes (``train_minutes``) at that step."""

    step: int
    minutes: float
    value: float


@dataclass(frozen=True)
class TrialCurves:
    """One trial: its arm (the values of the arm keys, as logged), seed, wall-clock seconds from the start
    of its run to its end, and the FID and KID histories by step."""

    trial: str
    arm: tuple[str, ...]
    seed: str
    seconds: float
    curves: dict[str, list[Point]]
    run_id: str = ""  # its MLflow run, where its sample grids are

    def final(self, metric: str) -> float:
        """The value at the last logged step (nan if never logged)."""
        points = self.curves.get(metric, [])
        return points[-1].value if points else math.nan

    def best(self, metric: str) -> float:
        """The lowest logged value (nan if never logged)."""
        points = self.curves.get(metric, [])
        return min(p.value for p in points) if points else math.nan

    def last_step(self) -> int:
        """The last step with an FID (0 before the first report)."""
        points = self.curves.get("fid", [])
        return points[-1].step if points else 0

    def last_minutes(self) -> float:
        """The training minutes at the last FID (nan before the first report)."""
        points = self.curves.get("fid", [])
        return points[-1].minutes if points else math.nan

    def at_minutes(self, metric: str, minutes: float) -> float:
        """The value linearly interpolated at ``minutes`` of training (nan outside the logged range)."""
        points = self.curves.get(metric, [])
        if not points or not points[0].minutes <= minutes <= points[-1].minutes:
            return math.nan
        return float(np.interp(minutes, [p.minutes for p in points], [p.value for p in points]))


class Spread(NamedTuple):
    """Mean and sample standard deviation (ddof 1) over seeds; std is nan for one value, both for none."""

    mean: float
    std: float

    def __str__(self) -> str:
        if math.isnan(self.mean):
            return "-"
        return f"{self.mean:.4g}" if math.isnan(self.std) else f"{self.mean:.4g} ± {self.std:.2g}"


def spread(values: Sequence[float]) -> Spread:
    """Spread of the finite ``values`` (a trial without the metric does not count)."""
    finite = np.array([v for v in values if math.isfinite(v)], dtype=np.float64)
    if len(finite) == 0:
        return Spread(math.nan, math.nan)
    return Spread(float(finite.mean()), float(finite.std(ddof=1)) if len(finite) > 1 else math.nan)


@dataclass(frozen=True)
class ArmSummary:
    """One row of the study table."""

    values: tuple[str, ...]
    seeds: tuple[str, ...]
    steps: tuple[int, ...]  # the last FID step of each seed
    final_fid: Spread
    final_kid: Spread
    timed_fid: Spread  # at the study's equal training time
    timed_kid: Spread
    best_fid: Spread
    seconds: Spread


def _natural(value: str) -> tuple[int, float, str]:
    """Sort key: numbers by value, before other strings."""
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


def arms(trials: Sequence[TrialCurves]) -> dict[tuple[str, ...], list[TrialCurves]]:
    """Trials by arm, arms in natural order of their values, trials in natural order of their seeds."""
    grouped: dict[tuple[str, ...], list[TrialCurves]] = {}
    for trial in trials:
        grouped.setdefault(trial.arm, []).append(trial)
    return {
        arm: sorted(grouped[arm], key=lambda t: (_natural(t.seed), t.trial))
        for arm in sorted(grouped, key=lambda values: [_natural(v) for v in values])
    }


def equal_minutes(trials: Sequence[TrialCurves]) -> float:
    """The equal wall-clock point: the training minutes that every trial reached (its last FID), nan if none."""
    reached = [t.last_minutes() for t in trials]
    return min(reached) if reached and all(math.isfinite(m) for m in reached) else math.nan


def summarize(trials: Sequence[TrialCurves]) -> list[ArmSummary]:
    """One summary per arm (``arms`` order)."""
    minutes = equal_minutes(trials)
    return [
        ArmSummary(
            values=arm,
            seeds=tuple(t.seed for t in members),
            steps=tuple(t.last_step() for t in members),
            final_fid=spread([t.final("fid") for t in members]),
            final_kid=spread([t.final("kid") for t in members]),
            timed_fid=spread([t.at_minutes("fid", minutes) for t in members]),
            timed_kid=spread([t.at_minutes("kid", minutes) for t in members]),
            best_fid=spread([t.best("fid") for t in members]),
            seconds=spread([t.seconds for t in members]),
        )
        for arm, members in arms(trials).items()
    ]


def _steps_cell(steps: tuple[int, ...]) -> str:
    low, high = min(steps), max(steps)
    return str(low) if low == high else f"{low}-{high}"


def markdown_table(summaries: Sequence[ArmSummary], keys: Sequence[str], minutes: float) -> str:
    """The study table: one row per arm; ``minutes``: the equal training time (``equal_minutes``)."""
    at = f"{minutes:.3g} min" if math.isfinite(minutes) else "equal time"
    header = [*keys, "seeds", "steps", "final FID", "final KID", f"FID at {at}", f"KID at {at}", "best FID",
              "wall-clock per run (s)"]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for arm in summaries:
        cells = [*arm.values, ", ".join(arm.seeds), _steps_cell(arm.steps), str(arm.final_fid), str(arm.final_kid),
                 str(arm.timed_fid), str(arm.timed_kid), str(arm.best_fid), str(arm.seconds)]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def verdicts(summaries: Sequence[ArmSummary], keys: Sequence[str]) -> list[str]:
    """One sentence per arm other than the best (lowest mean final FID): is its final FID worse by more than
    the two arms' seed spreads added (std_best + std_arm)? None with fewer than two arms."""
    ranked = [arm for arm in summaries if math.isfinite(arm.final_fid.mean)]
    if len(ranked) < 2:
        return []
    best = min(ranked, key=lambda arm: arm.final_fid.mean)
    lines = []
    for arm in ranked:
        if arm is best:
            continue
        gap, noise = arm.final_fid.mean - best.final_fid.mean, best.final_fid.std + arm.final_fid.std
        if not math.isfinite(noise):
            verdict = "no seed spread to compare it with (one seed)"
        elif gap > noise:
            verdict = f"more than the seed spreads added ({noise:.3g}): a real difference at this size"
        else:
            verdict = f"within the seed spreads added ({noise:.3g}): not established by these seeds"
        lines.append(
            f"- Final FID of {_label(keys, arm.values)} is {gap:.3g} above {_label(keys, best.values)}: {verdict}."
        )
    return lines


def markdown_report(
    summaries: Sequence[ArmSummary], keys: Sequence[str], intro: str, minutes: float, grids: bool = False
) -> str:
    """``study.md``: ``intro`` (Markdown), the table, the verdicts, how to read them, the curves and (with
    ``grids``) the arms' sample grids."""
    notes = (
        "Mean ± standard deviation over seeds (ddof 1; no spread with one seed). Final: at a trial's last "
        "report (equal steps); at N min: interpolated at the training minutes every trial reached (equal "
        "wall-clock; training steps only, without FID, grids and start-up); best: its lowest FID; wall-clock "
        "per run: from the start of a trial's MLflow run (Ray Train start included) to its end. FID on few "
        "samples is biased upward; compare arms within one study.\n"
    )
    found = verdicts(summaries, keys)
    parts = [
        intro.rstrip() + "\n",
        markdown_table(summaries, keys, minutes),
        *(["\n".join(found) + "\n"] if found else []),
    ]
    pictures = [f"![FID and KID curves]({CURVES_FILE})\n"]
    if grids:
        pictures.append(f"![Each arm's samples at its first seed's last FID step]({GRIDS_FILE})\n")
    return "\n".join([*parts, notes, *pictures])


def _label(keys: Sequence[str], arm: tuple[str, ...]) -> str:
    return " ".join(f"{key.rpartition('.')[2]}={value}" for key, value in zip(keys, arm)) or "all trials"


def mean_curve(members: Sequence[TrialCurves], metric: str) -> list[Point]:
    """Mean step, minutes and value over the seeds at the steps every seed logged."""
    by_seed = [{p.step: p for p in t.curves.get(metric, [])} for t in members]
    common = sorted(set.intersection(*(set(points) for points in by_seed))) if by_seed else []
    return [
        Point(step, float(np.mean([seed[step].minutes for seed in by_seed])),
              float(np.mean([seed[step].value for seed in by_seed])))
        for step in common
    ]  # fmt: skip


def plot_curves(trials: Sequence[TrialCurves], keys: Sequence[str], title: str = "") -> bytes:
    """PNG: FID (top) and KID (bottom) against step (left) and training minutes (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(CURVE_METRICS), 2, figsize=(10, 6.5), dpi=90, squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (arm, members) in enumerate(arms(trials).items()):
        colour = colours[index % len(colours)]
        for row, metric in enumerate(CURVE_METRICS):
            mean = mean_curve(members, metric)
            for column, x in enumerate(("step", "minutes")):
                axis = axes[row][column]
                for trial in members:
                    points = trial.curves.get(metric, [])
                    axis.plot([getattr(p, x) for p in points], [p.value for p in points], "-", color=colour,
                              linewidth=0.8, alpha=0.45)  # fmt: skip
                axis.plot([getattr(p, x) for p in mean], [p.value for p in mean], "o-", color=colour, linewidth=2.5,
                          markersize=3, label=_label(keys, arm) if row == column == 0 else None)  # fmt: skip
    for row, metric in enumerate(CURVE_METRICS):
        for column, x in enumerate(("training step", "training minutes (train_minutes)")):
            axes[row][column].set_xlabel(x)
            axes[row][column].set_ylabel(metric.upper())
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title or "mean over seeds (thick) and each seed (thin)", fontsize=9)
    fig.tight_layout()
    return figure_png(fig)


def collect_trials(tracking_uri: str, parent_run_id: str, keys: Sequence[str]) -> list[TrialCurves]:
    """The trials of a sweep from its MLflow child runs: arm values and seed from their params, FID and
    KID histories with the ``train_minutes`` logged at the same steps."""
    trials = []
    for trial, run in sorted(child_runs(tracking_uri, parent_run_id).items()):
        start, params = run.info.start_time, run.data.params
        handle = RunHandle(tracking_uri, run.info.run_id)
        minutes = _latest(handle, "train_minutes")
        curves = {}
        for metric in CURVE_METRICS:
            latest = _latest(handle, metric)
            curves[metric] = [Point(s, minutes.get(s, math.nan), latest[s]) for s in sorted(latest)]
        if run.info.end_time:
            seconds = (run.info.end_time - start) / 1000
        else:  # still running (or killed without an end time): up to its last logged metric
            seconds = (
                max((m.timestamp for m in handle.metric_history("train_minutes")), default=math.nan) - start
            ) / 1000
        arm = tuple(params.get(key, "-") for key in keys)
        trials.append(TrialCurves(trial, arm, params.get(SEED_KEY, "-"), seconds, curves, run.info.run_id))
    return trials


def grids_picture(trials: Sequence[TrialCurves], keys: Sequence[str], tracking_uri: str) -> np.ndarray | None:
    """Each arm's sample grid at the last FID step of its first seed that logged one there, side by side
    and captioned (the arms at equal steps when their trials ran to the end); None when no trial has one."""
    pictures, captions = [], []
    for arm, members in arms(trials).items():
        for trial in members:
            grid = RunHandle(tracking_uri, trial.run_id).logged_image(GRID_KEY, trial.last_step())
            if grid is not None:
                pictures.append(grid)
                captions.append(f"{_label(keys, arm)}, seed {trial.seed}, step {trial.last_step()}")
                break
    return captioned_pictures(pictures, captions) if pictures else None


def _latest(handle: RunHandle, metric: str) -> dict[int, float]:
    """step -> value of a metric; a step logged twice (a resumed run) keeps its last value."""
    history = sorted(handle.metric_history(metric), key=lambda m: m.timestamp)
    return {m.step: m.value for m in history}


def write_study_report(
    directory: str, tracking_uri: str, parent_run_id: str, keys: Sequence[str], intro: str
) -> list[str]:
    """Write ``study.md``, ``study_curves.png`` and (when a trial logged a grid) ``study_grids.png`` to
    ``directory`` (a path or URI) and to the parent run; ``keys``: the swept config keys (the seed is left
    out of the arms). Returns the URIs written."""

    arm_keys = [key for key in keys if key != SEED_KEY]
    trials = collect_trials(tracking_uri, parent_run_id, arm_keys)
    grids = grids_picture(trials, arm_keys, tracking_uri)
    files = {
        REPORT_FILE: markdown_report(
            summarize(trials), arm_keys, intro, equal_minutes(trials), grids is not None
        ).encode(),
        CURVES_FILE: plot_curves(trials, arm_keys),
        **({GRIDS_FILE: png_bytes(grids)} if grids is not None else {}),
    }
    parent = RunHandle(tracking_uri, parent_run_id)
    for name, data in files.items():
        storage.write_bytes(storage.join(directory, name), data)
        parent.log_bytes(data, name)
    return [storage.join(directory, name) for name in files]
