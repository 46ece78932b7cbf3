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
    mono_steps = [m.step for m in client.get_metric_history(children["monolith"].info.run_id, "loss")]
    assert mono_steps == list(range(1, 2 * cfg.expert.steps + 1))  # K x the steps: matched compute, one axis
    assert len(client.get_metric_history(children["router"].info.run_id, "loss")) == cfg.router.steps

    train_wf(cfg=cfg)  # a rerun reuses every expert: their runs say so and still carry the curve
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.`ddm.reused` = 'true'")
    assert {r.data.tags[MODEL_TAG] for r in runs} == {"expert-00", "expert-01", "monolith"}
    assert len(client.get_metric_history(runs[0].info.run_id, "loss")) > 0
