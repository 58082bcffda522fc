"""tune/sweep.py: search spaces, trial configs and resource planning (fast), and a 4-trial sweep of the demo
preset on 2 CPUs that is interrupted after its first trial and resumed (slow)."""

from __future__ import annotations

import csv
import json
import math
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient
from PIL import Image

from dctdiff.commands.sweep_command import main
from dctdiff.commands.train_command import main as train_main
from dctdiff.data.bundled_photos import photo_crops
from dctdiff.data.sources import FASHION_MNIST_DIR, FashionMnistSource
from dctdiff.infra.ray_cluster import DATA_CPUS, ResourceError, plan_worker_cpus, training_threads
from dctdiff.models.config import ConfigError, build_config
from dctdiff.training.train_job import WorkerResources
from dctdiff.tuning.search_space import (
    builtin_studies,
    grid_size,
    is_pure_grid,
    load_study,
    tune_param_space,
    validate_space,
)
from dctdiff.tuning.study_report import CURVES_FILE, REPORT_FILE, spread
from dctdiff.tuning.sweep_job import (
    INTERRUPTED,
    SWEEP_FILE,
    TRIAL_CPUS,
    TRIALS_DIR,
    SweepPlan,
    TrialProgress,
    plan_concurrency,
    study_intro,
    trial_config,
)
from dctdiff.tuning.sweep_report import TRIAL_TAG, TrialRow, best_config_yaml, child_runs, format_table, rows_csv
from tests.prepared import write_prepared

REPO = Path(__file__).resolve().parents[1]
TINY = ["--set", "optim.batch_size=8", "--set", "model.embed_dim=32", "--set", "optim.warmup_steps=2"]


def write_space(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_builtin_studies_hold_the_papers_ablations_and_fit_the_demo_preset():
    assert builtin_studies() == ["dct_vs_pixel", "ebfr", "keep", "lr", "pixel_arm_lr_4e-3", "pixel_lr", "snr_scale"]
    demo = build_config("demo")
    for name in builtin_studies():
        validate_space(load_study(name).space, demo)
    seeds = {"cadence.seed": {"grid": [0, 1]}}
    three = {"cadence.seed": {"grid": [0, 1, 2]}}
    assert load_study("dct_vs_pixel").space == {"data.space": {"grid": ["dct", "pixel"]}, **three}
    assert load_study("snr_scale").space == {"diffusion.snr_scale": {"grid": [1, 2, 4]}, **seeds}
    assert load_study("ebfr").space == {"diffusion.ebfr": {"grid": [True, False]}, **seeds}
    assert load_study("keep").space == {"data.keep": {"grid": [2, 3, 4]}, **seeds}
    assert load_study("pixel_lr").space == {"data.space": {"grid": ["pixel"]}, "optim.lr": {"grid": [1e-3, 4e-3]}}
    pixel_arm = {"data.space": {"grid": ["pixel"]}, "optim.lr": {"grid": [4e-3]}, **three}
    assert load_study("pixel_arm_lr_4e-3").space == pixel_arm
    for name in (
        "dct_vs_pixel",
        "ebfr",
        "keep",
        "pixel_arm_lr_4e-3",
        "pixel_lr",
        "snr_scale",
    ):  # comparisons: every arm and seed to the end
        study = load_study(name)
        assert study.scheduler == "grid" and study.num_samples == 1 and is_pure_grid(study.space), name
    lr = load_study("lr")
    assert lr.num_samples == 8 and not is_pure_grid(lr.space) and lr.scheduler is None


def test_bad_spaces_fail_with_a_message_that_says_what_to_change(tmp_path):
    demo = build_config("demo")
    cases = [
        (
            {"optim.learning_rate": {"grid": [1e-3]}},
            "unknown space key 'optim.learning_rate'; sweepable keys: .*optim.lr",
        ),
        ({"cadence.max_steps": {"grid": [10]}}, "set by the sweep .* use --max-steps"),
        ({"data.block_size": {"grid": [2, 4]}}, "fixed by the prepared data"),
        ({"data.keep": {"grid": [2, 5]}}, r"value 5 is invalid: data.keep must be in 1..data.block_size\*\*2 = 1..4"),
        ({"optim.lr": {"loguniform": [0, 1e-3]}}, "low > 0"),
        ({"optim.lr": {"normal": [0, 1]}}, "unknown kind 'normal'"),
        ({"optim.lr": [1e-3, 1e-4]}, "write one of"),
        ({}, "the search space is empty"),
    ]
    for space, message in cases:
        with pytest.raises(ConfigError, match=message):
            validate_space(space, demo)
    with pytest.raises(ConfigError, match="neither a built-in study .*snr_scale"):
        load_study("snr")
    with pytest.raises(ConfigError, match="must be a mapping with 'space'"):
        load_study(write_space(tmp_path / "typo.yaml", "spaces: {}\n"))
    with pytest.raises(
        ConfigError, match="unknown keys \\['samples'\\]; allowed: description, space, num_samples, scheduler"
    ):
        load_study(write_space(tmp_path / "extra.yaml", "space: {optim.lr: {grid: [1.0e-3]}}\nsamples: 3\n"))
    with pytest.raises(ConfigError, match="scheduler must be one of asha, grid, got 'fifo'"):
        load_study(write_space(tmp_path / "fifo.yaml", "space: {optim.lr: {grid: [1.0e-3]}}\nscheduler: fifo\n"))


def test_param_space_becomes_tune_search_objects():
    space = {"diffusion.snr_scale": {"grid": [1, 4]}, "diffusion.ebfr": {"grid": [True, False]},
             "optim.lr": {"loguniform": [1e-4, 1e-2]}, "cadence.seed": {"randint": [0, 3]}}  # fmt: skip
    tuned = tune_param_space(space)
    assert tuned["diffusion.snr_scale"] == {"grid_search": [1, 4]}
    assert (tuned["optim.lr"].lower, tuned["optim.lr"].upper) == (1e-4, 1e-2)
    assert {tuned["cadence.seed"].sample() for _ in range(200)} == {0, 1, 2}  # high excluded
    assert grid_size(space) == 4 and not is_pure_grid(space)
    assert is_pure_grid({k: space[k] for k in ("diffusion.snr_scale", "diffusion.ebfr")})


def make_plan(**changes) -> SweepPlan:
    base = build_config("demo", overrides=["optim.batch_size=8", "model.embed_dim=32"])
    values = dict(
        name="s", storage="/tmp/s", data="/tmp/d", base=base.to_dict(), study="t", space={}, scheduler="asha",
        num_samples=1, max_steps=6, report_every=3, fid_samples=8, nfe=4, grace_steps=3, reduction_factor=2.0,
        resources=WorkerResources(max_failures=0), max_concurrent=None,
        tracking_uri="sqlite:////tmp/s.db", experiment="e",
    )  # fmt: skip
    return SweepPlan(**{**values, **changes})


def test_trial_config_applies_the_values_and_puts_an_fid_in_every_report():
    config = trial_config(make_plan(), {"diffusion.snr_scale": 8, "diffusion.ebfr": False, "optim.lr": 3e-4})
    assert (config.diffusion.snr_scale, config.diffusion.ebfr, config.optim.lr) == (8.0, False, 3e-4)
    s = config.cadence
    assert (s.max_steps, s.fid_samples, s.sample_nfe) == (6, 8, 4)
    assert s.log_every == s.fid_every == s.checkpoint_every == s.sample_every == 3
    assert (config.model.embed_dim, config.optim.batch_size) == (32, 8)  # the base config is kept


@pytest.mark.parametrize(
    "cpus, gpus, workers, cpus_per_worker, gpus_per_worker",
    [
        (2, 0, 1, None, 0),
        (16, 0, 1, None, 0),
        (16, 0, 4, 0.5, 0),
        (8, 2, 1, None, 1),
        (64, 8, 2, 4, 1),
        (3, 0, 2, None, 0),
    ],
)
def test_concurrent_trials_and_ray_data_fit_and_one_more_would_not(
    cpus, gpus, workers, cpus_per_worker, gpus_per_worker
):
    per_worker, concurrent = plan_concurrency(cpus, gpus, workers, cpus_per_worker, gpus_per_worker, None)
    per_trial = TRIAL_CPUS + workers * per_worker
    assert concurrent >= 1 and concurrent * per_trial + DATA_CPUS <= cpus + 1e-9
    assert concurrent * workers * gpus_per_worker <= gpus
    assert (concurrent + 1) * per_trial + DATA_CPUS > cpus + 1e-9 or (concurrent + 1) * workers * gpus_per_worker > gpus
    assert per_worker <= 1.0 or cpus_per_worker is not None


def test_misfits_are_explained():
    assert plan_concurrency(2, 0, 1, None, 0, None) == (pytest.approx(0.99), 1)  # 4 trials on 2 CPUs: they queue
    with pytest.raises(ResourceError, match="holds 1 trial.* Use --max-concurrent-trials 1 or less"):
        plan_concurrency(2, 0, 1, None, 0, 2)
    with pytest.raises(ResourceError, match="no trial fits"):
        plan_concurrency(2, 0, 2, 1.0, 0, None)
    with pytest.raises(ResourceError, match="no trial fits"):
        plan_concurrency(8, 0, 1, None, 1, None)  # a GPU per worker on a CPU-only cluster


def test_the_fid_reference_is_saved_with_the_plan_checked_before_ray_and_fixed_on_resume(tmp_path, capsys, no_ray):
    data = write_prepared(tmp_path / "data", photo_crops(8, 32, seed=0), store_pixels=True)  # for the pixel arm
    held_out = write_prepared(tmp_path / "held-out", photo_crops(8, 32, seed=1))  # no pixels: FID needs none
    sweeps = tmp_path / "sweeps"
    common = ["--study", "dct_vs_pixel", "--data", str(data), "--storage", str(sweeps), "--name", "x"]
    assert main([*common, "--fid-reference", str(held_out), "--dry-run"]) == 0
    plan = yaml.safe_load(capsys.readouterr().out)
    assert plan.pop("job") == "sweep" and plan["fid_reference"] == str(held_out)
    # study.md says which images the FIDs compare with
    assert f"EMA samples (euler_maruyama, 250 NFE) against the held-out images of `{held_out}` every" in study_intro(
        SweepPlan.from_json(plan), 4
    )
    training = replace(SweepPlan.from_json(plan), fid_reference="")
    assert f"against the training images of `{data}` every" in study_intro(training, 4)

    assert main([*common, "--fid-reference", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --fid-reference") and "does not exist" in err and "\n" not in err

    (sweeps / "x").mkdir(parents=True)
    (sweeps / "x" / SWEEP_FILE).write_text(json.dumps(plan))
    assert main(["--resume", "--name", "x", "--storage", str(sweeps), "--fid-reference", str(data), "--dry-run"]) == 2
    assert f"--fid-reference {data} is not the saved {held_out}" in capsys.readouterr().err
    assert main(["--resume", "--name", "x", "--storage", str(sweeps), "--dry-run"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["fid_reference"] == str(held_out)


def test_data_without_pixels_fails_a_dct_vs_pixel_sweep_before_ray(tmp_path, capsys, no_ray):
    """Before: only the base config's arm (dct) was checked, and the pixel trials failed at their start."""
    data = write_prepared(tmp_path / "data", photo_crops(8, 32, seed=0))
    argv = ["--study", "dct_vs_pixel", "--data", str(data), "--storage", str(tmp_path / "sweeps"), "--name", "x"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: --data {data} has no pixels column for data.space=pixel: prepare with --store-pixels"


def test_a_trial_on_two_cpus_trains_with_two_threads():
    """A trial's worker gets 0.99 CPU (0.01 is its Tune actor's) plus Ray Data's idle reserved CPU: 2 threads,
    as `dctdiff train` on the same machine. Before, int(0.99 + 1) = 1: every `make study` trial used one core."""
    cpus, _ = plan_concurrency(2, 0, 1, None, 0, None)
    assert int(cpus + DATA_CPUS) == 1  # the old rule
    assert training_threads(cpus, 1) == 2 == training_threads(plan_worker_cpus(1, 2.0), 1)
    assert training_threads(0.5, 2) == 1 and training_threads(0.49, 2) == 1  # 2 workers share the 2 cores
    assert training_threads(3.0, 1) == 4


def test_command_line_errors_come_before_any_work(tmp_path, capsys):
    space = write_space(tmp_path / "grid.yaml", "space:\n  diffusion.snr_scale: {grid: [1, 4]}\n")
    common = ["--data", str(tmp_path), "--storage", str(tmp_path / "sweeps")]
    cases = [
        (["--study", space, "--num-samples", "3", *common], "would repeat the same 2 grid trials"),
        (
            ["--study", space, "--max-steps", "4", "--report-every", "8", *common],
            "--report-every must be in 1..--max-steps",
        ),
        (["--resume", "--name", "x", "--study", space, "--storage", str(tmp_path)], "saved settings; drop --study"),
        (["--resume", "--name", "x", "--storage", str(tmp_path)], "x/dctdiff_sweep.json does not exist"),
        (["--study", space, "--fid-samples", "3", *common], "--fid-samples must be >= 4"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert __import__("re").search(message, capsys.readouterr().err), message


def test_the_study_file_sets_the_default_scheduler_and_the_command_line_wins(tmp_path, capsys):
    common = ["--data", str(tmp_path), "--storage", str(tmp_path / "sweeps"), "--dry-run"]
    for argv, expected in ((["--study", "dct_vs_pixel"], "grid"), (["--study", "dct_vs_pixel", "--scheduler", "asha"], "asha"),
                           (["--study", "lr"], "asha")):  # fmt: skip
        assert main([*argv, *common]) == 0, argv
        plan = yaml.safe_load(capsys.readouterr().out)
        assert plan["scheduler"] == expected, argv
    assert plan["description"] == load_study("lr").description


def test_result_table_and_best_config_file(tmp_path):
    rows = [
        TrialRow("t1", {"diffusion.snr_scale": 4, "diffusion.ebfr": False}, 12.5, 4, 4, "finished", "r1"),
        TrialRow("t0", {"diffusion.snr_scale": 1, "diffusion.ebfr": True}, math.nan, None, 0, "error", ""),
    ]
    parsed = list(csv.DictReader(rows_csv(rows).splitlines()))
    assert parsed[0] == {"trial": "t1", "diffusion.ebfr": "False", "diffusion.snr_scale": "4", "best_fid": "12.5",
                         "best_fid_step": "4", "steps": "4", "status": "finished", "mlflow_run_id": "r1"}  # fmt: skip
    assert parsed[1]["best_fid"] == "nan" and parsed[1]["best_fid_step"] == ""
    assert format_table(rows).splitlines()[2].split() == ["t0", "True", "1", "-", "-", "0", "error"]
    config = build_config("demo", overrides=["diffusion.snr_scale=4", "diffusion.ebfr=false"])
    path = tmp_path / "best.yaml"
    path.write_text(best_config_yaml(config, rows[0], "s", 8, 3))
    assert build_config("demo", [str(path)]) == config


# --------------------------------------------------------------------------------------------------
# A real sweep on the 2-CPU Ray
# --------------------------------------------------------------------------------------------------


def wait_for(condition, timeout: float, process: subprocess.Popen, log: Path) -> None:
    deadline = time.time() + timeout
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the sweep exited with {process.returncode} too early:\n{log.read_text()[-4000:]}")
        if time.time() > deadline:
            process.kill()
            pytest.fail(f"timed out; sweep log:\n{log.read_text()[-4000:]}")
        time.sleep(1)


@pytest.mark.slow
@pytest.mark.heavy
def test_interrupted_sweep_resumes_without_rerunning_finished_trials(ray_session, tmp_path):
    """2 trials (c in {1, 4}) on 2 CPUs run one at a time; SIGINT after the first trial, --resume; then
    the MLflow parent and 2 child runs, results.csv and a best config that train accepts."""
    data = write_prepared(tmp_path / "data", photo_crops(16, 32, seed=0))
    space = write_space(tmp_path / "space.yaml", "space:\n  diffusion.snr_scale: {grid: [1, 4]}\n")
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    sweeps = tmp_path / "sweeps"
    where = ["--storage", str(sweeps), "--name", "ablation"]
    argv = ["--study", space, "--data", str(data), *TINY, "--max-steps", "4", "--report-every", "2", "--grace-steps", "2",
            "--fid-samples", "8", "--nfe", "3", "--mlflow-uri", tracking, *where]  # fmt: skip
    log = tmp_path / "sweep.log"
    address = ray_session.get_runtime_context().gcs_address
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "tune/sweep.py", *argv, "--address", address],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    record = sweeps / "ablation" / SWEEP_FILE
    wait_for(record.exists, 600, process, log)
    parent = SweepPlan(**__import__("json").loads(record.read_text())).parent_run_id
    # one trial at a time on 2 CPUs: the second child run appears once Tune has finished the first trial
    wait_for(lambda: len(child_runs(tracking, parent)) >= 2, 600, process, log)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=600) == INTERRUPTED, log.read_text()[-4000:]

    client = MlflowClient(tracking)
    before = child_runs(tracking, parent)
    (first,) = [r for r in before.values() if r.info.status == "FINISHED"]
    assert {r.info.status for r in before.values()} == {"FINISHED", "KILLED"}
    assert client.get_run(parent).info.status == "KILLED"
    first_trial = first.data.tags[TRIAL_TAG]
    run_file = sweeps / "ablation" / TRIALS_DIR / first_trial / "dctdiff_run.json"
    first_written = run_file.stat().st_mtime_ns

    assert main([*where, "--resume"]) == 0  # in this process, on the same Ray

    runs = child_runs(tracking, parent)
    assert len(runs) == 2 and client.get_run(parent).info.status == "FINISHED"
    # the finished trial was not run again: its run file and MLflow run are untouched
    assert run_file.stat().st_mtime_ns == first_written
    assert client.get_run(first.info.run_id).info.end_time == first.info.end_time
    assert {float(r.data.params["diffusion.snr_scale"]) for r in runs.values()} == {1.0, 4.0}
    best_fids = {}
    for trial, run in runs.items():
        assert run.info.status == "FINISHED" and run.data.tags["mlflow.parentRunId"] == parent
        fids = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "fid")}
        assert set(fids) in ({2}, {2, 4}), fids  # ASHA may stop a trial at its first rung (step 2)
        assert run.data.tags.get("dctdiff.stopped_early") == ("true" if set(fids) == {2} else None)
        images = [a.path for a in client.list_artifacts(run.info.run_id, "images")]  # step-indexed sample grids
        assert any(p.startswith("images/samples+step+2+") for p in images)
        best_fids[trial] = min(fids.values())

    table = list(csv.DictReader((sweeps / "ablation" / "results.csv").open()))
    assert [row["trial"] for row in table] == sorted(best_fids, key=best_fids.get)
    for row in table:
        assert float(row["best_fid"]) == pytest.approx(best_fids[row["trial"]], rel=1e-12)
        assert (row["status"], row["steps"]) in (("finished", "4"), ("stopped", "2"))
    assert {a.path for a in client.list_artifacts(parent)} >= {"results.csv", "best_config.yaml", "space.yaml"}
    # the study report of a sweep without seeds: one arm per trial, one seed each
    rows = [line for line in (sweeps / "ablation" / REPORT_FILE).read_text().splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + 2 and all(row.split(" | ")[1] == "0" for row in rows[1:])
    assert {a.path for a in client.list_artifacts(parent)} >= {REPORT_FILE, CURVES_FILE}

    # the best trial's config: its values on the base config (not the sweep's short schedule)
    best_file = sweeps / "ablation" / "best_config.yaml"
    config = build_config("demo", [str(best_file)])
    best = runs[table[0]["trial"]].data.params
    assert str(config.diffusion.snr_scale) == best["diffusion.snr_scale"]
    assert (config.model.embed_dim, config.optim.batch_size) == (32, 8)
    assert config.cadence.max_steps == build_config("demo").cadence.max_steps
    # train's own checks accept it with the sweep's data (--dry-run: every check, no training)
    assert train_main(["--config", str(best_file), "--data", str(data), "--max-steps", "2", "--storage",
                       str(tmp_path / "runs"), "--mlflow-uri", tracking, "--dry-run"]) == 0  # fmt: skip


def fashion_mnist_images(count: int) -> np.ndarray:
    """The first ``count`` Fashion-MNIST training images (uint8 [n, 32, 32, 3], grey), or a skip."""
    if not Path(FASHION_MNIST_DIR).is_dir():
        pytest.skip(f"no Fashion-MNIST in {FASHION_MNIST_DIR}: apt-get install dataset-fashion-mnist")
    source = FashionMnistSource(None, "train")
    return np.stack([loaded.payload for loaded in source.load(source.items()[:count])])


@pytest.mark.slow
@pytest.mark.heavy
def test_the_dct_vs_pixel_study_writes_its_report(ray_session, tmp_path):
    """`make study` in miniature: the built-in study (2 arms x 3 seeds, grid scheduler from the study file)
    for 2 steps on 16 Fashion-MNIST images; KID beside FID in every trial; study.md and the curves."""
    data = write_prepared(tmp_path / "data", fashion_mnist_images(16), colour="grey", store_pixels=True)
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    sweeps = tmp_path / "sweeps"
    argv = [
        "--study",
        "dct_vs_pixel",
        "--data",
        str(data),
        *TINY,
        "--max-steps",
        "2",
        "--report-every",
        "2",
        "--fid-samples",
        "4",
        "--nfe",
        "2",
        "--mlflow-uri",
        tracking,
        "--storage",
        str(sweeps),
        "--name",
        "study",
    ]
    assert main(argv) == 0  # fmt: skip

    plan = SweepPlan.from_json(__import__("json").loads((sweeps / "study" / SWEEP_FILE).read_text()))
    client = MlflowClient(tracking)
    assert client.get_run(plan.parent_run_id).data.params["sweep.scheduler"] == "grid"
    runs = child_runs(tracking, plan.parent_run_id)
    final = {}
    for run in runs.values():
        assert run.info.status == "FINISHED"
        metrics = {key: client.get_metric_history(run.info.run_id, key) for key in ("fid", "kid", "kid_std")}
        assert all([m.step for m in history] == [2] for history in metrics.values()), metrics
        arm = final.setdefault(run.data.params["data.space"], {})
        arm[run.data.params["cadence.seed"]] = (metrics["fid"][0].value, metrics["kid"][0].value)
    assert sorted(final) == ["dct", "pixel"] and all(sorted(seeds) == ["0", "1", "2"] for seeds in final.values())

    text = (sweeps / "study" / REPORT_FILE).read_text()
    assert text.startswith("# Study dct_vs_pixel: sweep study")
    rows = [line.strip("|").split("|") for line in text.splitlines() if line.startswith("| ")]
    assert [cell.strip() for cell in rows[0]][:3] == ["data.space", "seeds", "steps"]
    for row, space in zip(rows[1:], ["dct", "pixel"]):
        fids, kids = zip(*final[space].values())
        assert [cell.strip() for cell in row[:5]] == [space, "0, 1, 2", "2", str(spread(fids)), str(spread(kids))]
    with Image.open(sweeps / "study" / CURVES_FILE) as picture:
        assert picture.format == "PNG"
    assert {a.path for a in client.list_artifacts(plan.parent_run_id)} >= {REPORT_FILE, CURVES_FILE, "results.csv"}


def test_each_trial_gets_one_line_when_it_starts_and_one_when_it_ends(capsys):
    """In place of Tune's status table every 30 s (about 1,000 lines in the hour-long `make study`)."""
    from types import SimpleNamespace

    from dctdiff.infra.logs import configure_logging

    configure_logging("INFO")
    trial = SimpleNamespace(trial_id="7e314_00000", config={"data.space": "dct", "cadence.seed": 0},
                            last_result={"step": 1500, "fid": 215.253, "kid": 0.14189, "time_total_s": 377.9},
                            local_path="/tmp/sweep/7e314_00000")  # fmt: skip
    progress = TrialProgress()
    progress.on_trial_start(0, [trial], trial)
    progress.on_trial_complete(1, [trial], trial)
    progress.on_trial_error(2, [trial], trial)
    assert capsys.readouterr().err.splitlines() == [
        "trial 7e314_00000 (seed=0 space=dct) started",
        "trial 7e314_00000 (seed=0 space=dct) ended at step 1500: FID 215.3, KID 0.1419, 378 s",
        "trial 7e314_00000 (seed=0 space=dct) failed; its error is in /tmp/sweep/7e314_00000",
    ]
