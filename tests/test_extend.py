"""Growing a DDM: placing new clips, the grown folder's lineage, and the workflow that trains only the new experts."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from lib.cluster.kmeans import ClusterInputError
from lib.config import ConfigError, ExtendConfig, RunConfig, replace_in
from lib.data.procedural import clip_spec
from lib.extend.assign import place_new_clips
from lib.extend.grow import read_parent
from lib.sample.pipeline import DDMLoadError, DDMPipeline


def _unit(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _new_clips(rng, n_near=12, n_far=30, d=8):
    """Clips near parent centroid 1, and clips around a direction no parent centroid covers."""
    parent = np.eye(d, dtype=np.float32)[:3]
    near = _unit(parent[1] + 0.05 * rng.normal(size=(n_near, d)))
    far = _unit(np.eye(d)[5] + 0.05 * rng.normal(size=(n_far, d)))
    x = np.concatenate([near, far]).astype(np.float32)
    roles = np.array(["train"] * (n_near + n_far - 6) + ["prompt"] * 6)
    return x, roles, parent


def test_near_clips_join_their_cluster_far_clips_found_a_new_one():
    x, roles, parent = _new_clips(np.random.default_rng(0))
    ids = [f"new-{i}" for i in range(len(x))]
    placed = place_new_clips(x, ids, roles, parent, np.full(50, 0.1), ExtendConfig(join_distance=0.3), 10, 0)
    a = placed.assignments
    assert placed.num_parent == 3 and placed.new_cluster_ids == [3] and placed.centroids.shape == (4, 8)
    assert (a["cluster_id"].iloc[:12] == 1).all() and (a["cluster_id"].iloc[12:] == 3).all()
    assert (a["role"].iloc[-6:] == "prompt").all()  # held-out far clips are assigned to the new cluster, not fitted
    np.testing.assert_allclose(placed.centroids[:3], parent)
    assert placed.summary["joined_parent_clusters"] == {"1": 12}
    assert placed.summary["new_clusters"] == {"3": 24}  # 30 far clips, 6 of them held out
    assert placed.summary["parent_member_distance"]["p50"] == pytest.approx(0.1)
    assert np.all(a["distance"] < 0.05)
    # a threshold above every distance: nothing is new, so no new expert can be trained, and the error says why
    with pytest.raises(ClusterInputError, match=r"0 new train clip\(s\) lie farther than extend.join_distance=2.0"):
        place_new_clips(x, ids, roles, parent, np.full(50, 0.1), ExtendConfig(join_distance=2.0), 10, 0)
    two = place_new_clips(x, ids, roles, parent, np.full(5, 0.1), ExtendConfig(new_clusters=2), 10, 0)
    assert two.new_cluster_ids == [3, 4] and set(two.assignments["cluster_id"].iloc[12:]) <= {3, 4}


def test_extend_config_and_scene_subsets():
    with pytest.raises(ConfigError, match="extend.scenes: 'dots' is not one of"):
        ExtendConfig(scenes=["dots"])
    with pytest.raises(ConfigError, match=r"extend.join_distance: a cosine distance: must lie in \[0, 2\]"):
        ExtendConfig(join_distance=-0.1)
    with pytest.raises(ConfigError, match="data.scenes"):
        replace_in(RunConfig(), data={"scenes": ["plain", "plain"]})
    data = ExtendConfig(num_clips=7).data_config(RunConfig().data)
    assert (data.num_clips, data.scenes, data.frames) == (7, ["checker"], RunConfig().data.frames)
    # all four families draw the default corpus; a subset draws only its families, under ids of its own
    assert clip_spec(0, 3) == clip_spec(0, 3, scenes=("plain", "gradient", "stripes", "checker"))
    sub = [clip_spec(0, i, scenes=("checker",)) for i in range(20)]
    assert {s.scene for s in sub} == {"checker"} and sub[3].clip_id == "builtin-0-checker-0000003"


def _tiny(tmp_path, **extend):
    return replace_in(
        RunConfig(),
        data={"num_clips": 60, "frames": 4, "height": 16, "width": 16, "shard_size": 64, "themed_scenes": True,
              "scenes": ["plain", "gradient", "stripes"]},
        cluster={"num_clusters": 2, "fine_clusters": 8, "silhouette_sample": 60},
        expert={"steps": 4, "num_layers": 1, "num_heads": 2, "head_dim": 16, "ffn_dim": 64, "batch_size": 4,
                "checkpoint_every": 2, "log_every": 2, "warmup_steps": 1},
        router={"steps": 4, "batch_size": 8},
        extend={"num_clips": 40, "scenes": ["checker"], **extend},
        output_dir=str(tmp_path / "out"),
    )  # fmt: skip


def test_grown_ddm_reuses_the_parents_experts_byte_for_byte_and_trains_only_the_new_one(tmp_path, capfd):
    from workflows.extend import extend_wf

    cfg = _tiny(tmp_path)
    grown = Path(extend_wf(cfg=cfg).path)
    out = capfd.readouterr().out
    # the parent's experts came from its run (trained here, as no earlier run existed) and only expert-02 is new
    assert "expert-02: trained 4 steps" in out and out.count("expert-02: trained") == 1
    manifest = json.loads((grown / "ddm.json").read_text())
    lineage = manifest["lineage"]
    parent = read_parent(lineage["parent"]["path"])
    assert lineage["version"] == 2 and lineage["parent"]["version"] == 1 and lineage["new_experts"] == [2]
    assert [e["cluster_id"] for e in lineage["reused_experts"]] == [0, 1]
    for k in (0, 1):
        ours, theirs = grown / f"experts/expert-{k:02d}", parent.folder / f"experts/expert-{k:02d}"
        for f in sorted(theirs.iterdir()):
            assert (ours / f.name).read_bytes() == f.read_bytes(), f
    assert lineage["placement"]["new_clusters"]["2"] > 0
    np.testing.assert_allclose(np.asarray(read_parent(grown).centroids[:2]), parent.centroids)
    assert read_parent(grown).state.keys() == parent.state.keys() == {"visual_stats_mean", "visual_stats_std"}

    pipe = DDMPipeline.from_pretrained(grown)
    assert pipe.num_experts == 3
    videos = pipe(["a red circle moving left on a black checkerboard", "a ball"], num_steps=2, seed=0)
    assert videos.shape == (2, 4, 16, 16, 3) and videos.dtype == np.uint8

    # a rerun trains nothing: the parent's experts and the new one are all reused
    extend_wf(cfg=cfg)
    again = capfd.readouterr().out
    assert re.search(r"expert-\d+: trained", again) is None and "expert-02: reused" in again


def test_grow_refuses_new_data_that_is_the_parents_own_and_parents_without_a_clustering_record(tmp_path):
    from workflows.extend import extend_wf

    same = _tiny(tmp_path, scenes=["plain", "gradient", "stripes"], num_clips=60)
    with pytest.raises(Exception, match=r"new clip id\(s\) are parent clips"):
        extend_wf(cfg=same)
    folder = tmp_path / "old-ddm"
    folder.mkdir()
    (folder / "ddm.json").write_text(json.dumps({"num_experts": 1, "experts": [], "centroids": None}))
    with pytest.raises(DDMLoadError, match="no centroids or clustering record"):
        read_parent(folder)
