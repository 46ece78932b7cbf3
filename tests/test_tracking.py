"""MLflow tracking: one run per execution, one nested run per model, read back through the MLflow API."""

import shutil
import time

import pytest

from lib.config import RunConfig, config_to_dict, config_to_yaml, load_config, replace_in
from lib.tracking import DB_FILE, EXECUTION_TAG, MAX_PARAM_CHARS, MODEL_TAG, Tracker, flatten, tracking_uri
from tests.e2e.test_train_workflow import _cfg
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
    assert experiment.artifact_location == "mlflow-artifacts:/ddm-flyte"  # beside the store, wherever it moves
    mono_steps = [m.step for m in client.get_metric_history(children["monolith"].info.run_id, "loss")]
    assert mono_steps == list(range(1, 2 * cfg.expert.steps + 1))  # K x the steps: matched compute, one axis
    assert len(client.get_metric_history(children["router"].info.run_id, "loss")) == cfg.router.steps
    router = children["router"].info
    assert router.end_time > router.start_time, "the router's run lasts as long as its training"

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


def _tracker(folder) -> Tracker:
    return Tracker(f"sqlite:///{folder / DB_FILE}", "exec-1")


def test_a_model_recorded_after_training_lasts_as_long_as_its_training(tmp_path):
    tracker = _tracker(tmp_path)
    started = time.time() - 5.0  # training began five seconds ago
    tracker.record_model("router", "router", {"steps": 4}, [{"step": 1, "loss": 0.5}], started)
    (run,) = [r for r in tracker.client.search_runs([tracker.experiment_id]) if r.data.tags.get(MODEL_TAG)]
    assert run.info.start_time == int(started * 1000) and run.info.end_time - run.info.start_time >= 5000
    assert run.info.status == "FINISHED"


def test_the_execution_run_holds_the_resolved_config_as_params_and_yaml(tmp_path):
    cfg = replace_in(RunConfig(), expert={"lr": 1e-3}, data={"manifest": "m" * 7000, "source": "manifest"})
    tracker = _tracker(tmp_path)
    run_id = tracker.execution_run()
    tracker.log_config(run_id, config_to_dict(cfg), config_to_yaml(cfg))
    params = tracker.client.get_run(run_id).data.params
    assert len(params) == len(flatten(config_to_dict(cfg))) > 100  # more than one batch of params
    assert params["expert.lr"] == "0.001" and params["cluster.num_clusters"] == str(cfg.cluster.num_clusters)
    assert params["data.manifest"] == "m" * MAX_PARAM_CHARS  # cut to MLflow's limit; the YAML keeps it whole
    assert load_config(tracker.artifact_dir(run_id) / "config.yaml") == cfg
    tracker.name_execution(run_id, "reevaluation")  # a re-evaluation is not named like a pipeline run
    assert tracker.client.get_run(run_id).info.run_name == "reevaluation exec-1"


def test_a_copied_tracking_store_reads_its_artifacts_from_the_copy(tmp_path):
    original, copy = tmp_path / "outputs", tmp_path / "elsewhere" / "outputs"
    tracker = _tracker(original)
    run_id = tracker.execution_run()
    (tmp_path / "table.csv").write_text("a,b\n1,2\n")
    (tmp_path / "gifs").mkdir()
    (tmp_path / "gifs" / "m.gif").write_bytes(b"GIF89a")
    tracker.log_artifact(run_id, tmp_path / "table.csv")
    tracker.log_artifact(run_id, tmp_path / "gifs", "samples")
    shutil.copytree(original, copy)
    shutil.rmtree(original)  # the copy must not lean on the original folder
    assert str(original).encode() not in (copy / DB_FILE).read_bytes(), "no absolute path in the store"
    moved = _tracker(copy)
    folder = moved.artifact_dir(run_id)
    assert folder.is_relative_to(copy)
    assert (folder / "table.csv").read_text() == "a,b\n1,2\n"
    assert (folder / "samples" / "m.gif").read_bytes() == b"GIF89a"
    assert moved.client.get_run(run_id).info.artifact_uri == f"mlflow-artifacts:/ddm-flyte/{run_id}/artifacts"
