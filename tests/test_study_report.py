"""The study report (dctdiff/tuning/study_report.py): arms and their spread over seeds against hand-computed
values, and study.md / study_curves.png from child runs in a local MLflow store (no Ray)."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from dctdiff.infra.mlflow_runs import PARENT_TAG
from dctdiff.infra.mlflow_tracking import get_or_create_experiment
from dctdiff.tuning.study_report import (
    CURVES_FILE,
    GRIDS_FILE,
    REPORT_FILE,
    Point,
    Spread,
    TrialCurves,
    equal_minutes,
    mean_curve,
    spread,
    summarize,
    verdicts,
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
    # the thick mean curve: the steps both seeds logged, mean minutes and value there
    assert mean_curve([trials[1], trials[2]], "fid") == [Point(2, 45.0, 25.0), Point(4, 75.0, 12.0)]
    assert mean_curve([trials[0], trials[3]], "fid") == [Point(2, 25.0, 55.0)]


def test_equal_wall_clock_interpolates_each_trial_at_the_time_every_trial_reached():
    fast = TrialCurves("a", ("dct",), "0", 0.0, curves([(2, 3.0, 30.0), (4, 6.0, 10.0)]))
    slow = TrialCurves("b", ("pixel",), "0", 0.0, curves([(2, 2.0, 60.0), (4, 4.0, 40.0)]))
    assert equal_minutes([fast, slow]) == 4.0  # slow's last FID
    assert fast.at_minutes("fid", 4.0) == pytest.approx(30.0 - 20.0 / 3)  # a third of the way from 3 to 6 min
    assert slow.at_minutes("fid", 4.0) == 40.0
    assert math.isnan(fast.at_minutes("fid", 2.0)) and math.isnan(fast.at_minutes("fid", 7.0))  # not logged there
    assert math.isnan(fast.at_minutes("kid", 4.0))  # no KID history
    assert math.isnan(equal_minutes([fast, TrialCurves("c", ("x",), "0", 0.0, curves([]))]))  # one never reported


def test_verdicts_compare_each_arm_with_the_best_against_the_added_seed_spreads():
    def arm(space, finals):
        members = [
            TrialCurves(f"{space}{i}", (space,), str(i), 0.0, curves([(4, 1.0, v)])) for i, v in enumerate(finals)
        ]
        return members

    clear, close, single = arm("dct", [10.0, 14.0]), arm("pixel", [40.0, 60.0]), arm("keep", [13.0, 15.0])
    lines = verdicts(summarize([*clear, *close]), ["data.space"])
    # dct 12 ± 2.83, pixel 50 ± 14.1: 38 above, more than 16.97
    assert lines == ["- Final FID of space=pixel is 38 above space=dct: more than the seed spreads added (17): a real "
                     "difference at this size."]  # fmt: skip
    (line,) = verdicts(summarize([*clear, *single]), ["data.space"])  # 14 ± 1.41 vs 12 ± 2.83: 2 < 4.24
    assert (
        line
        == "- Final FID of space=keep is 2 above space=dct: within the seed spreads added (4.24): not established by these seeds."
    )
    (line,) = verdicts(summarize([clear[0], close[0]]), ["data.space"])
    assert line.endswith("no seed spread to compare it with (one seed).")
    assert verdicts(summarize(clear), ["data.space"]) == []  # one arm: nothing to compare


def add_trial(client, experiment, parent, trial, space, seed, start, end, fid, kid):
    """A finished child run as the sweep leaves it: tags, the config params, fid/kid at steps with the
    train_minutes the worker loop logs at the same steps (the middle number of each point)."""
    run = client.create_run(experiment, start_time=start, tags={PARENT_TAG: parent, TRIAL_TAG: trial})
    run_id = run.info.run_id
    client.log_param(run_id, "data.space", space)
    client.log_param(run_id, "cadence.seed", seed)
    for key, history in (("fid", fid), ("kid", kid)):
        for step, minutes, value in history:
            client.log_metric(run_id, key, value, timestamp=start + step * 1000, step=step)
            client.log_metric(run_id, "train_minutes", minutes, timestamp=start + step * 1000, step=step)
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
    add_trial(
        client,
        experiment,
        parent,
        "b0",
        "pixel",
        "0",
        t0,
        t0 + 90_000,
        [(2, 20, 60.0), (4, 40, 40.0)],
        [(2, 20, 0.6), (4, 40, 0.4)],
    )  # fmt: skip (the slower arm: 40 training minutes at step 4)
    runs = {r.data.tags[TRIAL_TAG]: r.info.run_id for r in client.search_runs([experiment]) if TRIAL_TAG in r.data.tags}
    for trial, step, colour in (("a0", 2, (255, 0, 0)), ("a1", 4, (0, 255, 0)), ("b0", 2, (0, 0, 0)),
                                ("b0", 4, (0, 0, 255))):  # fmt: skip
        grid = np.broadcast_to(np.array(colour, np.uint8), (20, 30, 3)).copy()  # a sample grid of one colour
        client.log_image(runs[trial], grid, key="samples", step=step)
    intro = "# Study dct_vs_pixel: sweep s"
    report, image, grids = write_study_report(
        str(tmp_path / "sweep"), tracking, parent, ["cadence.seed", "data.space"], intro
    )

    text = (tmp_path / "sweep" / REPORT_FILE).read_text()
    assert report == str(tmp_path / "sweep" / REPORT_FILE) and text.startswith(intro + "\n")
    header, rule, *rows = table_rows(text)
    assert header == ["data.space", "seeds", "steps", "final FID", "final KID", "FID at 40 min", "KID at 40 min",
                      "best FID", "wall-clock per run (s)"]  # fmt: skip
    # at 40 min, a third of the way from 30 to 60: FID 23.33 and 18 (mean 20.67, std 5.33 / sqrt 2), KID 0.167, 0.267
    assert rows == [
        ["dct", "0, 1", "4", "12 ± 2.8", "0.15 ± 0.071", "20.67 ± 3.8", "0.2167 ± 0.071", "12 ± 2.8", "110 ± 14"],
        ["pixel", "0", "4", "40", "0.4", "40", "0.4", "40", "90"],  # one seed: no spread
    ]
    assert "- Final FID of space=pixel is 28 above space=dct: no seed spread to compare it with (one seed)." in text
    assert f"]({CURVES_FILE})" in text

    png = (tmp_path / "sweep" / CURVES_FILE).read_bytes()
    assert image.endswith(CURVES_FILE) and 5_000 < len(png) < 200_000
    with Image.open(io.BytesIO(png)) as picture:
        picture.verify()
        assert picture.format == "PNG" and picture.size[0] > picture.size[1] > 300
    assert {a.path for a in client.list_artifacts(parent)} == {REPORT_FILE, CURVES_FILE, GRIDS_FILE}
    # each arm's grid at its last FID step (4): dct's seed 0 logged one only at step 2, so its seed 1's
    # (green); pixel's seed 0's step-4 grid (blue, not its step-2 black), side by side under captions
    assert grids == str(tmp_path / "sweep" / GRIDS_FILE) and f"]({GRIDS_FILE})" in text
    with Image.open(tmp_path / "sweep" / GRIDS_FILE) as picture:
        pixels = np.asarray(picture.convert("RGB"))
    top = pixels.shape[0] - 12 - 20  # the pictures end 12 pixels (the gap) above the bottom
    assert pixels.shape[1] == 30 * 2 + 12 * 3
    assert (pixels[top : top + 20, 12:42] == (0, 255, 0)).all() and (pixels[top : top + 20, 54:84] == (0, 0, 255)).all()
    assert (pixels[top - 1, 12:42] != (0, 255, 0)).any() and (pixels[top + 20, 12:42] == 255).all()


def test_a_sweep_without_seeds_has_one_seed_per_arm(tmp_path):
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking)
    experiment = get_or_create_experiment(tracking, "dctdiff")
    parent = client.create_run(experiment).info.run_id
    t0 = 1_700_000_000_000
    for trial, space in (("a", "dct"), ("b", "pixel")):
        add_trial(client, experiment, parent, trial, space, "0", t0, t0 + 50_000, [(2, 10, 5.0)], [])
    assert write_study_report(str(tmp_path), tracking, parent, ["data.space"], "# s") == [
        str(tmp_path / REPORT_FILE),
        str(tmp_path / CURVES_FILE),
    ]  # no trial logged a sample grid: no study_grids.png
    assert GRIDS_FILE not in (tmp_path / REPORT_FILE).read_text()
    _, _, *rows = table_rows((tmp_path / REPORT_FILE).read_text())
    assert rows == [  # no KID logged
        ["dct", "0", "2", "5", "-", "5", "-", "5", "50"],
        ["pixel", "0", "2", "5", "-", "5", "-", "5", "50"],
    ]
