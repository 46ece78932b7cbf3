"""Re-scoring a run's samples: the videos and their prompts come from the run's one samples stage, and the scores
carry bootstrap intervals that bracket the observed value."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from safetensors.numpy import save_file


@pytest.fixture(scope="module")
def rescore(benchmark_script):
    return benchmark_script("rescore_samples")


def _stage(run: Path, name: str, prompts: dict) -> None:
    folder = run / "stages" / "samples" / name
    folder.mkdir(parents=True)
    videos = {"monolith": np.zeros((2, 2, 4, 4, 3), np.uint8), "ddm:topk": np.ones((2, 2, 4, 4, 3), np.uint8)}
    meta = {"prompts": json.dumps(prompts), "skipped": json.dumps({})}  # as sample_methods writes it
    save_file(videos, str(folder / "videos.safetensors"), metadata=meta)


def test_run_videos_reads_methods_and_prompts_and_refuses_ambiguity(rescore, tmp_path):
    prompts = {"prompt_id": [0, 1], "clip_id": ["a", "b"], "caption": ["x", "y"], "cluster_id": [0, 1]}
    _stage(tmp_path, "s1", prompts)
    videos, table = rescore.run_videos(tmp_path)
    assert sorted(videos) == ["ddm:topk", "monolith"] and videos["ddm:topk"].shape == (2, 2, 4, 4, 3)
    assert table["clip_id"].tolist() == ["a", "b"]
    _stage(tmp_path, "s2", prompts)
    with pytest.raises(SystemExit, match="found 2"):
        rescore.run_videos(tmp_path)
    with pytest.raises(SystemExit, match="found 0"):
        rescore.run_videos(tmp_path / "nothing")


def test_scores_average_the_headline_attributes_with_intervals_around_them(rescore):
    rng = np.random.default_rng(0)
    hits = pd.DataFrame({a: rng.random(200) < p for a, p in zip(("color", "shape", "background", "motion"),
                                                                  (0.9, 0.3, 1.0, 0.5), strict=True)})  # fmt: skip
    hits["object_found"] = hits["color"]
    out = rescore.scores(hits, seed=0)
    assert out["background"] == 1.0 and abs(out["color"] - 0.9) < 0.08
    mean4, low, high = out["mean4"]
    assert mean4 == pytest.approx(hits[["color", "shape", "background", "motion"]].to_numpy().mean(), abs=1e-3)
    assert low < mean4 < high and high - low < 0.1
    assert out["object_found"][0] == out["color"]
    assert rescore.scores(hits, seed=0) == out  # seeded: the same intervals every time
