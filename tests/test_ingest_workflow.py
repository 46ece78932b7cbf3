import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from lib.config import RunConfig, config_to_dict, replace_in
from tasks.ingest import ingest_clips

ROOT = Path(__file__).resolve().parents[1]


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
    assert sorted(p.name for p in Path(out.shards.path).iterdir())[:2] == ["index.parquet", "shard-00000.safetensors"]


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
