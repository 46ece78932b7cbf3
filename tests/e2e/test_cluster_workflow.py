import json
from pathlib import Path

import pandas as pd
from safetensors.numpy import load_file

from data_schemas.cluster import ClusterAssignment
from lib.config import RunConfig, replace_in
from lib.encode.store import read_codec_info
from tasks.cluster import cluster_clips, embed_clips
from tasks.encode import encode_clips, train_codec
from tasks.ingest import ingest_clips
from workflows.cluster import cluster_wf


def _cfg(tmp_path, **cluster):
    return replace_in(
        RunConfig(),
        data={"num_clips": 60, "frames": 4, "height": 16, "width": 16, "shard_size": 32},
        cluster={"num_clusters": 2, "fine_clusters": 8, "silhouette_sample": 60, **cluster},
        output_dir=str(tmp_path / "out"),
    )


def test_tasks_chain_and_outputs_live_in_output_dir(tmp_path, capfd):
    cfg = _cfg(tmp_path, embedders=["visual_stats", "text"])
    shards, index, _, attributes, _ = ingest_clips(
        cfg=cfg.data, seed=cfg.seed, output_dir=cfg.output_dir, videos=[], cuts=[]
    )
    codec = train_codec(
        encode=cfg.encode, cfg=cfg.codec, seed=cfg.seed, shards=shards, index=index, output_dir=cfg.output_dir
    )
    assert not any(Path(codec.path).iterdir()), "the pixel codec trains nothing"
    encoded, encoded_index = encode_clips(
        cfg=cfg.encode, shards=shards, index=index, codec=codec, output_dir=cfg.output_dir
    )
    assert list(encoded_index["clip_id"]) == list(index["clip_id"])
    assert read_codec_info(encoded.path)["captions"]["cut"] == 0, "the default max_tokens holds every caption"
    assert "encode: 60 clips; 0 of 60 captions (0.0 %) cut to encode.max_tokens=40" in capfd.readouterr().out
    emb = embed_clips(cfg=cfg.cluster, shards=shards, encoded=encoded, index=index, output_dir=cfg.output_dir)
    x = load_file(emb.path)["embeddings"]
    assert x.shape[0] == 60 and abs(float((x**2).sum(1).mean()) - 1.0) < 1e-4
    assignments, summary, centroids = cluster_clips(
        cfg=cfg.cluster, seed=cfg.seed, embeddings=emb, index=index, attributes=attributes, output_dir=cfg.output_dir
    )
    ClusterAssignment.validate(assignments)
    assert set(assignments["clip_id"]) == set(index["clip_id"])
    assert sorted(summary["size"].tolist()) == sorted(assignments["cluster_id"].value_counts().tolist())
    assert load_file(centroids.path)["centroids"].shape == (2, x.shape[1])
    for item in (shards.path, encoded.path, emb.path, centroids.path):
        assert Path(item).resolve().is_relative_to((tmp_path / "out").resolve())
    report = Path(centroids.path).parent / "report.html"
    assert "<table" in report.read_text() and (Path(centroids.path).parent / "projection.png").is_file()
    assert '<table class="cluster-ami">' in report.read_text(), "built-in clips carry attributes: AMI per attribute"


def test_cluster_workflow_is_deterministic(tmp_path):
    a = cluster_wf(cfg=_cfg(tmp_path / "a"))
    b = cluster_wf(cfg=_cfg(tmp_path / "b"))
    pd.testing.assert_frame_equal(a, b)
    assert a["size"].sum() == 60


def test_learned_codec_task_feeds_encode_and_is_carried_by_the_encoded_folder(tmp_path):
    cfg = replace_in(
        _cfg(tmp_path),
        data={"num_clips": 60, "frames": 4, "height": 16, "width": 16, "shard_size": 32, "validation_fraction": 0.2},
        encode={"codec": "learned"},
        codec={"block_out_channels": [8, 16], "norm_num_groups": 8, "steps": 3, "batch_size": 4, "warmup_steps": 1},
    )
    shards, index, _, _, _ = ingest_clips(cfg=cfg.data, seed=cfg.seed, output_dir=cfg.output_dir, videos=[], cuts=[])
    codec = train_codec(
        encode=cfg.encode, cfg=cfg.codec, seed=cfg.seed, shards=shards, index=index, output_dir=cfg.output_dir
    )
    report = json.loads((Path(codec.path) / "codec_report.json").read_text())
    assert report["steps"] == 3 and report["frames_seen"] == 12
    encoded, _ = encode_clips(cfg=cfg.encode, shards=shards, index=index, codec=codec, output_dir=cfg.output_dir)
    info = read_codec_info(encoded.path)
    assert info["name"] == "vae" and info["learned"] == report
    assert info["latent_shape"] == [4, 4, 8, 8] and Path(info["vae_path"]).is_relative_to(Path(encoded.path).resolve())
