"""The one MLflow API (dctdiff.infra.mlflow_runs) against a local SQLite store, read back with MLflow's client."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from dctdiff.infra.mlflow_runs import PARENT_TAG, RunHandle, create_run, find_run


@pytest.fixture
def uri(tmp_path) -> str:
    return f"sqlite:///{tmp_path}/mlflow.db"


def test_a_run_is_created_logged_to_and_ended(uri, tmp_path):
    run = create_run(uri, "exp", "first", {"dctdiff.data": "d"}, {"optim.lr": 1e-4}, job="evaluate")
    run.log_params({"workers": 2})
    run.log_metrics([("fid", 3.5, 10), ("fid", 2.5, 20)], {"fid.reference": "ref"})
    run.set_tags({"dctdiff.best_trial": "t1"})
    run.log_text("a: 1\n", "config.yaml")
    run.log_dict({"eta": 2.0}, "stats.json")
    run.log_bytes(b"\x89PNG", "plots/curves.png")
    (tmp_path / "table.csv").write_text("keep,rfid\n1,2\n")
    run.log_file(tmp_path / "table.csv", "reconstruction")
    run.log_table({"keep": [1, 2], "rfid": [4.0, 3.0]}, "reconstruction/table.json")
    run.log_image(np.zeros((4, 4, 3), np.uint8), key="samples", step=5)
    run.log_dataset("data", "abc123", "local", json.dumps({"uri": "/d"}), json.dumps({"rows": 9}), "training")
    assert run.status() == "RUNNING"
    run.end("FAILED")

    client = MlflowClient(uri)
    logged = client.get_run(run.run_id)
    assert logged.info.status == "FAILED" and logged.info.experiment_id == run.experiment_id()
    assert (
        logged.data.tags["mlflow.runName"] == "first" and logged.data.tags["mlflow.source.name"] == "dctdiff evaluate"
    )
    assert logged.data.tags["dctdiff.data"] == "d" and logged.data.tags["fid.reference"] == "ref"
    assert logged.data.tags["dctdiff.best_trial"] == "t1"
    assert logged.data.params == {"optim.lr": "0.0001", "workers": "2"}
    assert [(m.step, m.value) for m in run.metric_history("fid")] == [(10, 3.5), (20, 2.5)]
    files = {a.path for a in client.list_artifacts(run.run_id)} | {a.path for folder in ("plots", "reconstruction")
                                                                    for a in client.list_artifacts(run.run_id, folder)}  # fmt: skip
    assert {
        "config.yaml",
        "stats.json",
        "plots/curves.png",
        "reconstruction/table.csv",
        "reconstruction/table.json",
    } <= files
    (dataset_input,) = logged.inputs.dataset_inputs
    assert dataset_input.dataset.digest == "abc123" and {t.key: t.value for t in dataset_input.tags} == {
        "mlflow.data.context": "training"
    }


def test_a_logged_image_is_read_back_by_key_and_step_the_last_of_a_step_logged_twice(uri):
    run = create_run(uri, "exp", "grids", {}, {})
    images = [np.full((3, 5, 3), value, np.uint8) for value in (10, 20, 30, 40)]
    run.log_image(images[0], key="samples", step=5)
    run.log_image(images[1], key="samples", step=50)  # 50 starts with 5: not the step-5 image
    run.log_image(images[2], key="band/a", step=5)  # another key ("/" is "~" in MLflow's artifact name)
    time.sleep(0.01)  # a later millisecond timestamp in the name
    run.log_image(images[3], key="samples", step=5)  # a resumed run's repeat of step 5: the last one counts
    assert np.array_equal(run.logged_image("samples", 5), images[3])
    assert np.array_equal(run.logged_image("samples", 50), images[1])
    assert np.array_equal(run.logged_image("band/a", 5), images[2])
    assert run.logged_image("samples", 6) is None and run.logged_image("other", 5) is None


def test_a_run_is_found_reopened_and_its_children_listed(uri):
    parent = create_run(uri, "exp", "sweep", {}, job="sweep")
    children = [create_run(uri, "exp", f"trial {i}", {PARENT_TAG: parent.run_id}) for i in range(2)]
    create_run(uri, "exp", "unrelated", {})
    assert {r.info.run_id for r in parent.child_runs(10)} == {c.run_id for c in children}
    parent.end()
    assert find_run(uri, parent.run_id) == RunHandle(uri, parent.run_id)
    assert find_run(uri, "0" * 32) is None
    assert parent.reopen() == "FINISHED" and parent.status() == "RUNNING"
