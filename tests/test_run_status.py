"""Who ends an MLflow run and with which status (docs/ARCHITECTURE.md, "Training")."""

from __future__ import annotations

from mlflow.tracking import MlflowClient

from dctdiff.infra.mlflow_runs import create_run
from dctdiff.training.train_job import close_run


def test_a_failed_resume_never_unfinishes_a_finished_run(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    runs = {}
    for previous in ("FINISHED", "RUNNING"):
        runs[previous] = create_run(uri, "e", f"was-{previous}", tags={"t": "1"}, params={"a": 1})
        close_run(runs[previous], succeeded=False, previous_status=previous)
    assert client.get_run(runs["FINISHED"].run_id).info.status == "FINISHED"  # a resume attempt failed
    assert client.get_run(runs["RUNNING"].run_id).info.status == "FAILED"  # the run itself failed
    run = client.get_run(runs["RUNNING"].run_id)
    assert run.data.tags["mlflow.runName"] == "was-RUNNING" and run.data.params == {"a": "1"}
