import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from lib.config import RunConfig, config_to_dict, replace_in
from lib.data.procedural import iter_builtin_clips
from lib.data.video import write_mp4
from tasks.ingest import ingest_clips
from tasks.report import report_ingest

ROOT = Path(__file__).resolve().parents[2]


def _cfg(tmp_path):
    return replace_in(
        RunConfig(),
        data={"num_clips": 30, "frames": 4, "height": 16, "width": 16, "shard_size": 16},
        output_dir=str(tmp_path / "out"),
    )


def test_task_called_as_function_returns_typed_outputs(tmp_path):
    cfg = _cfg(tmp_path)
    out = ingest_clips(cfg=cfg.data, seed=cfg.seed, output_dir=cfg.output_dir, videos=[], cuts=[])
    assert len(out.index) == 30 and out.quarantine.empty
    names = sorted(p.name for p in Path(out.shards.path).iterdir())
    assert names[:3] == ["SHA256SUMS", "index.parquet", "shard-00000.safetensors"]  # the checksum listing included


def test_pyflyte_run_ingest_workflow(tmp_path):
    cfg = _cfg(tmp_path)
    env = {**os.environ, "FLYTE_LOCAL_CACHE_ENABLED": "false"}
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "pyflyte"),
            "run",
            "workflows/ingest.py",
            "ingest_wf",
            "--cfg",
            json.dumps(config_to_dict(cfg)),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    dest = tmp_path / "out" / "ingest"
    shards = next(line for line in proc.stdout.splitlines() if "shard(s) ->" in line).split("-> ")[1]
    assert shards.startswith(str(tmp_path / "out" / "stages" / "ingest")), "shards live in the persistent output dir"
    assert pd.read_parquet(dest / "clip_index.parquet")["clip_id"].is_unique
    assert len(pd.read_parquet(dest / "attributes.parquet")) == 30
    assert (Path(shards) / "shard-00001.safetensors").is_file()


def test_pyflyte_run_refuses_unknown_config_keys(tmp_path):
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "pyflyte"),
            "run",
            "workflows/ingest.py",
            "ingest_wf",
            "--cfg",
            '{"data": {"num_clipz": 3}}',
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert "data.num_clipz" in proc.stdout + proc.stderr


def test_ingest_report_counts_clips_with_held_frames(tmp_path, capsys):
    frames = np.stack([c.frames[0] for c in iter_builtin_clips(0, 16, 1, 16, 16)])
    write_mp4(tmp_path / "native.mp4", frames, fps=8)
    write_mp4(tmp_path / "slow.mp4", frames[:4], fps=2)
    (tmp_path / "m.csv").write_text("path,caption,clip_id\nnative.mp4,native,a\nslow.mp4,slow,b\n")
    cfg = replace_in(_cfg(tmp_path), data={"source": "manifest", "manifest": str(tmp_path / "m.csv"), "fps": 8.0,
                                           "frames": 8})  # fmt: skip
    out = ingest_clips(cfg=cfg.data, seed=cfg.seed, output_dir=cfg.output_dir, videos=[], cuts=[])
    report_ingest(output_dir=cfg.output_dir, shards=out.shards, index=out.index, quarantine=out.quarantine,
                  attributes=out.attributes, filtered=out.filtered)  # fmt: skip
    assert "ingest: 1 clip(s) with held frames (source slower than data.fps" in capsys.readouterr().out
    assert pd.read_parquet(tmp_path / "out" / "ingest" / "clip_index.parquet")["held_frames"].tolist() == [0, 6]
