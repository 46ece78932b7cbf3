"""Growing a DDM: placing new clips, the grown folder's lineage, and the workflow that trains only the new experts."""

import hashlib
import json
import re
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lib.cluster.kmeans import ClusterInputError
from lib.config import RUN_ONLY_FIELDS, ConfigError, ExpertConfig, ExtendConfig, RunConfig, replace_in
from lib.data.procedural import clip_spec
from lib.encode.store import read_codec_info
from lib.extend.assign import place_new_clips
from lib.extend.grow import grow_ddm, read_parent
from lib.models.factory import TRAINING_INFO, weights_digest, weights_sha256
from lib.sample.folder import DDMLoadError
from lib.sample.pipeline import DDMPipeline
from lib.train.specs import ExpertSpec, continue_specs, expert_specs, training_data


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
    with pytest.raises(ConfigError, match=r"extend.continue_steps: must be >= 0 \(0: off\), got -1"):
        ExtendConfig(continue_steps=-1)
    assert ExtendConfig().continue_steps == 0  # off unless asked for
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
    videos = pipe(["a red circle moving left on a black checkerboard", "a ball"], num_inference_steps=2, seed=0).frames
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


def _assignments(rows):
    """A ClusterAssignment-like table from (clip_id, cluster_id, role) rows."""
    ids, clusters, roles = zip(*rows, strict=True)
    return pd.DataFrame({"clip_id": ids, "cluster_id": clusters, "distance": 0.1, "fine_cluster": clusters,
                         "role": roles})  # fmt: skip


def test_continue_specs_name_the_start_weights_and_cover_the_parent_and_joined_clips(tmp_path):
    parent = _assignments([("p0", 0, "train"), ("p1", 1, "train"), ("p2", 1, "train"), ("p3", 1, "prompt"),
                           ("p4", 2, "train")])  # fmt: skip
    new = _assignments([("n0", 1, "train"), ("n1", 1, "validation"), ("n2", 3, "train"), ("n3", 2, "train")])
    cfg = replace_in(RunConfig(), extend={"continue_steps": 5})
    assert continue_specs(replace_in(cfg, extend={"continue_steps": 0}), parent, new, {0: "a", 1: "b", 2: "c"}) == []
    # cluster 1: two parent train clips + one joined train clip; cluster 2 has no parent expert (failed): skipped
    specs = continue_specs(cfg, parent, new, {0: "a", 1: "b"})
    assert [(s.name, s.cluster_id, s.num_clips, s.init_sha256) for s in specs] == [("expert-01-continued", 1, 3, "b")]
    spec = specs[0]
    assert spec.expert == replace(cfg.expert, steps=5)  # the run's expert recipe, continue_steps long
    assert spec.data_hash == hashlib.sha256(b"p1\np2\nn0").hexdigest()[:16]  # parent clips, then the joined ones
    # the data of another placement is refused, not trained on under this spec's name
    with pytest.raises(ValueError, match=r"expert-01-continued: 2 training clips found .* not the 3 its spec"):
        training_data(spec, [(tmp_path / "parent", parent), (tmp_path / "new", new.iloc[1:])])


def test_start_weights_join_the_spec_hash_only_when_set():
    spec = ExpertSpec("expert-00", 0, seed=1, num_clips=10, data_hash="d", expert=ExpertConfig())
    # the hash every spec had before start weights (and budget_split, monolith_lr_scale, seed_fraction) existed:
    # existing models are reused
    legacy = asdict(spec)
    del legacy["init_sha256"]
    later = (*RUN_ONLY_FIELDS, "budget_split", "monolith_lr_scale", "seed_fraction")
    legacy["expert"] = {k: v for k, v in legacy["expert"].items() if k not in later}
    assert spec.spec_hash() == hashlib.sha256(json.dumps(legacy, sort_keys=True).encode()).hexdigest()[:16]
    assert expert_specs(RunConfig(), _assignments([("a", 0, "train")]), cluster_ids=[0])[0].init_sha256 == ""
    a, b = replace(spec, init_sha256="a" * 64), replace(spec, init_sha256="b" * 64)
    assert len({spec.spec_hash(), a.spec_hash(), b.spec_hash()}) == 3
    assert weights_digest({"x.safetensors": "1"}) != weights_digest({"x.safetensors": "2"})


def test_continue_steps_continue_the_joined_parent_experts_from_their_weights(tmp_path, capfd):
    from workflows.extend import extend_wf

    cfg = _tiny(tmp_path, continue_steps=2)
    grown = Path(extend_wf(cfg=cfg).path)
    out = capfd.readouterr().out
    lineage = json.loads((grown / "ddm.json").read_text())["lineage"]
    parent = read_parent(lineage["parent"]["path"])
    joined = sorted(int(c) for c in lineage["placement"]["joined_parent_clusters"])
    assert joined, "the tiny placement must let some new clips join a parent cluster"
    held = parent.present_experts()
    continued = {e["cluster_id"]: e for e in lineage["continued_experts"]}
    assert sorted(continued) == joined and lineage["continue_failed"] == [] and lineage["new_experts"] == [2]
    assert sorted(e["cluster_id"] for e in lineage["reused_experts"]) == sorted(set(held) - set(joined))
    for c in held:
        ours, theirs = grown / f"experts/expert-{c:02d}", parent.folder / f"experts/expert-{c:02d}"
        if c in continued:  # new weights, trained from the parent's for continue_steps on old + joined clips
            entry = continued[c]
            assert f"expert-{c:02d}-continued: trained 2 steps" in out
            assert entry["steps"] == 2 and entry["parent_weights_sha256"] == held[c]["weights_sha256"]
            assert entry["joined_clips"] == lineage["placement"]["joined_parent_clusters"][str(c)]
            assert entry["weights_sha256"] == weights_sha256(ours) != weights_sha256(theirs)
            info = json.loads((ours / TRAINING_INFO).read_text())
            assert info["init_weights_sha256"] == held[c]["weights_sha256"]
            assert info["num_clips"] > entry["joined_clips"]  # replay: the parent's clips too
        else:  # byte for byte
            assert all((ours / f.name).read_bytes() == f.read_bytes() for f in sorted(theirs.iterdir()))
    assert DDMPipeline.from_pretrained(grown).num_experts == 3

    # a rerun trains nothing, continued experts included
    extend_wf(cfg=cfg)
    again = capfd.readouterr().out
    assert re.search(r"expert-\d+(-continued)?: trained", again) is None
    assert f"expert-{joined[0]:02d}-continued: reused" in again

    # a continued expert that failed keeps the parent's expert (recorded as reused); one from elsewhere is refused
    encoded = next(p for p in (tmp_path / "out/stages/encode").iterdir() if not p.name.startswith("."))
    encoded_info = read_codec_info(encoded)  # parent's and new data's alike
    args = dict(parent=parent, new_experts={2: grown / "experts/expert-02"}, router_dir=grown / "router",
                encoded_info=encoded_info, centroids=read_parent(grown).centroids, encode_cfg=cfg.encode,
                placement=lineage["placement"])  # fmt: skip
    failed = json.loads((grow_ddm(tmp_path / "failed", **args, continued={joined[0]: None}) / "ddm.json").read_text())
    assert failed["lineage"]["continue_failed"] == [joined[0]] and failed["lineage"]["continued_experts"] == []
    assert sorted(e["cluster_id"] for e in failed["lineage"]["reused_experts"]) == sorted(held)
    assert weights_sha256(tmp_path / f"failed/experts/expert-{joined[0]:02d}") == held[joined[0]]["weights_sha256"]
    other = next(c for c in held if c != joined[0])
    with pytest.raises(DDMLoadError, match=f"did not start from the parent's expert {other}"):
        grow_ddm(tmp_path / "wrong", **args, continued={other: grown / f"experts/expert-{joined[0]:02d}"})
