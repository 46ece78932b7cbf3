"""MLflow tracking: one run per execution, one nested run per model, read back through the MLflow API."""

import pytest
from test_train_workflow import _cfg

from lib.tracking import DB_FILE, EXECUTION_TAG, MODEL_TAG, flatten, tracking_uri
from workflows.train import train_wf


def test_where_tracking_goes(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DDM_TRACKING", "1")
    assert tracking_uri(str(tmp_path / "out")) == f"sqlite:///{tmp_path / 'out' / DB_FILE}"
    assert tracking_uri("s3://bucket/run") is None  # a SQLite file cannot live in a bucket
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.team:5000")
    assert tracking_uri("s3://bucket/run") == "http://mlflow.team:5000"
    monkeypatch.setenv("DDM_TRACKING", "0")
    assert tracking_uri(str(tmp_path)) is None


def test_config_subtrees_flatten_to_params():
    assert flatten({"expert": {"lr": 0.002, "patch_size": [1, 2, 2]}, "seed": 0}) == {
        "expert.lr": "0.002",
        "expert.patch_size": "[1, 2, 2]",
        "seed": "0",
    }


@pytest.mark.slow
def test_training_stage_leaves_one_run_per_model_under_the_execution(monkeypatch, tmp_path):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DDM_TRACKING", "1")
    cfg = _cfg(tmp_path)
    train_wf(cfg=cfg)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'out' / DB_FILE}")
    experiment = client.get_experiment_by_name("ddm-flyte")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].data.tags[EXECUTION_TAG]
    parent_id = parents[0].info.run_id
    children = {r.data.tags[MODEL_TAG]: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_id}
    assert set(children) == {"expert-00", "expert-01", "monolith", "router"}
    expert = children["expert-00"]
    assert expert.info.status == "FINISHED" and expert.data.params["expert.lr"] == str(cfg.expert.lr)
    assert len(expert.data.params["spec_hash"]) == 16  # the run hash that names its model folder
    losses = client.get_metric_history(expert.info.run_id, "loss")
    assert [m.step for m in losses] == list(range(1, cfg.expert.steps + 1))
    assert all(m.value > 0 for m in client.get_metric_history(expert.info.run_id, "tokens_per_s"))
    assert experiment.artifact_location == (tmp_path / "out" / "mlartifacts").as_uri()  # beside the store, not ./mlruns
    mono_steps = [m.step for m in client.get_metric_history(children["monolith"].info.run_id, "loss")]
    assert mono_steps == list(range(1, 2 * cfg.expert.steps + 1))  # K x the steps: matched compute, one axis
    assert len(client.get_metric_history(children["router"].info.run_id, "loss")) == cfg.router.steps

    before = {r.info.run_id for r in client.search_runs([experiment.experiment_id])}
    train_wf(cfg=cfg)  # a rerun reuses experts and monolith by spec hash: they do not train, so they open no run
    new = [r for r in client.search_runs([experiment.experiment_id]) if r.info.run_id not in before]
    assert [r.data.tags[MODEL_TAG] for r in new] == ["router"]  # Flyte's cache is off in tests: the router reran


def test_a_summary_of_a_rerun_that_recomputed_nothing_opens_no_tracker(monkeypatch, tmp_path):
    import tasks.common as common

    monkeypatch.setenv("DDM_TRACKING", "1")
    monkeypatch.setattr(common, "_RAN", [])
    assert common.tracker_for(str(tmp_path), only_after_work=True) is None  # MLflow not even imported for it
    common.mark_ran("samples")
    assert common.tracker_for(str(tmp_path), only_after_work=True) is not None
