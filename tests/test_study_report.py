"""The study report (dctdiff/tuning/study_report.py): arms and their spread over seeds against hand-computed
values, and study.md / study_curves.png from child runs in a local MLflow store (no Ray)."""

from __future__ import annotations

import io
import math

import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from dctdiff.infra.mlflow_runs import PARENT_TAG
from dctdiff.infra.mlflow_tracking import get_or_create_experiment
from dctdiff.tuning.study_report import (
    CURVES_FILE,
    REPORT_FILE,
    Point,
    Spread,
    TrialCurves,
    mean_curve,
    spread,
    summarize,
    write_study_report,
)  # fmt: skip
from dctdiff.tuning.sweep_report import TRIAL_TAG

SQRT2 = math.sqrt(2.0)


def curves(fid: list[tuple[int, float, float]], kid: list[tuple[int, float, float]] | None = None):
    return {"fid": [Point(*p) for p in fid], "kid": [Point(*p) for p in kid or []]}


def test_spread_is_the_mean_and_sample_deviation_of_the_finite_values():
    assert spread([10.0, 14.0]) == (12.0, pytest.approx(2 * SQRT2))  # sqrt(((10-12)^2 + (14-12)^2) / 1)
    assert spread([1.0, 2.0, 6.0]) == (3.0, pytest.approx(math.sqrt(7.0)))  # (4 + 1 + 9) / 2 = 7
    one = spread([5.0, math.nan])
    assert one.mean == 5.0 and math.isnan(one.std)
    assert all(math.isnan(v) for v in spread([math.nan]))
    assert (str(Spread(12.0, 2 * SQRT2)), str(Spread(5.0, math.nan)), str(Spread(math.nan, math.nan))) == (
        "12 ± 2.8", "5", "-",
    )  # fmt: skip


def test_trials_group_into_arms_by_every_value_but_the_seed():
    trials = [
        TrialCurves("t3", ("pixel",), "1", 90.0, curves([(2, 30, 50.0), (4, 60, 40.0)], [(2, 30, 0.5), (4, 60, 0.3)])),
        TrialCurves("t0", ("dct",), "0", 100.0, curves([(2, 40, 30.0), (4, 70, 10.0)], [(2, 40, 0.2), (4, 70, 0.1)])),
        TrialCurves("t1", ("dct",), "1", 120.0, curves([(2, 50, 20.0), (4, 80, 14.0)], [(2, 50, 0.3), (4, 80, 0.2)])),
        TrialCurves("t2", ("pixel",), "0", 80.0, curves([(2, 20, 60.0)], [(2, 20, 0.6)])),  # stopped at step 2
    ]
    dct, pixel = summarize(trials)
    assert (dct.values, dct.seeds, dct.steps) == (("dct",), ("0", "1"), (4, 4))
    assert dct.final_fid == (12.0, pytest.approx(2 * SQRT2))  # finals 10, 14
    assert dct.best_fid == (12.0, pytest.approx(2 * SQRT2))
    assert dct.final_kid == (pytest.approx(0.15), pytest.approx(0.1 / SQRT2))  # 0.1, 0.2
    assert dct.seconds == (110.0, pytest.approx(10 * SQRT2))  # 100, 120
    assert (pixel.seeds, pixel.steps) == (("0", "1"), (2, 4))
    assert pixel.final_fid == (50.0, pytest.approx(10 * SQRT2))  # 60 (its last step), 40
    assert pixel.best_fid == (50.0, pytest.approx(10 * SQRT2))
    # the thick mean curve: the steps both seeds logged, mean seconds and value there
    assert mean_curve([trials[1], trials[2]], "fid") == [Point(2, 45.0, 25.0), Point(4, 75.0, 12.0)]
    assert mean_curve([trials[0], trials[3]], "fid") == [Point(2, 25.0, 55.0)]


def add_trial(client, experiment, parent, trial, space, seed, start, end, fid, kid):
    """A finished child run as the sweep leaves it: tags, the config params, fid/kid at steps and times."""
    run = client.create_run(experiment, start_time=start, tags={PARENT_TAG: parent, TRIAL_TAG: trial})
    run_id = run.info.run_id
    client.log_param(run_id, "data.space", space)
    client.log_param(run_id, "cadence.seed", seed)
    for key, history in (("fid", fid), ("kid", kid)):
        for step, seconds, value in history:
            client.log_metric(run_id, key, value, timestamp=start + int(seconds * 1000), step=step)
    client.set_terminated(run_id, "FINISHED", end_time=end)


def table_rows(text: str) -> list[list[str]]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_report_from_child_runs_writes_the_table_and_curves(tmp_path):
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking)
    experiment = get_or_create_experiment(tracking, "dctdiff")
    parent = client.create_run(experiment).info.run_id
    t0 = 1_700_000_000_000
    add_trial(client, experiment, parent, "a0", "dct", "0", t0, t0 + 100_000, [(2, 30, 30.0), (4, 60, 10.0)],
              [(2, 30, 0.2), (4, 60, 0.1)])  # fmt: skip
    add_trial(client, experiment, parent, "a1", "dct", "1", t0, t0 + 120_000, [(2, 30, 20.0), (4, 60, 14.0)],
              [(2, 30, 0.3), (4, 60, 0.2)])  # fmt: skip
    add_trial(client, experiment, parent, "b0", "pixel", "0", t0, t0 + 90_000, [(2, 30, 60.0), (4, 60, 40.0)],
              [(2, 30, 0.6), (4, 60, 0.4)])  # fmt: skip
    intro = "# Study dct_vs_pixel: sweep s"
    report, image = write_study_report(str(tmp_path / "sweep"), tracking, parent, ["cadence.seed", "data.space"], intro)

    text = (tmp_path / "sweep" / REPORT_FILE).read_text()
    assert report == str(tmp_path / "sweep" / REPORT_FILE) and text.startswith(intro + "\n")
    header, rule, *rows = table_rows(text)
    assert header == ["data.space", "seeds", "steps", "final FID", "final KID", "best FID", "wall-clock per run (s)"]
    assert rows == [
        ["dct", "0, 1", "4", "12 ± 2.8", "0.15 ± 0.071", "12 ± 2.8", "110 ± 14"],
        ["pixel", "0", "4", "40", "0.4", "40", "90"],  # one seed: no spread
    ]
    assert f"]({CURVES_FILE})" in text

    png = (tmp_path / "sweep" / CURVES_FILE).read_bytes()
    assert image.endswith(CURVES_FILE) and 5_000 < len(png) < 200_000
    with Image.open(io.BytesIO(png)) as picture:
        picture.verify()
        assert picture.format == "PNG" and picture.size[0] > picture.size[1] > 300
    assert {a.path for a in client.list_artifacts(parent)} == {REPORT_FILE, CURVES_FILE}


def test_a_sweep_without_seeds_has_one_seed_per_arm(tmp_path):
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking)
    experiment = get_or_create_experiment(tracking, "dctdiff")
    parent = client.create_run(experiment).info.run_id
    t0 = 1_700_000_000_000
    for trial, space in (("a", "dct"), ("b", "pixel")):
        add_trial(client, experiment, parent, trial, space, "0", t0, t0 + 50_000, [(2, 10, 5.0)], [])
    write_study_report(str(tmp_path), tracking, parent, ["data.space"], "# s")
    _, _, *rows = table_rows((tmp_path / REPORT_FILE).read_text())
    assert rows == [["dct", "0", "2", "5", "-", "5", "50"], ["pixel", "0", "2", "5", "-", "5", "50"]]  # no KID logged
