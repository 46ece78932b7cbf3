"""``output_dir: s3://bucket/prefix`` against a real S3 API: a moto server in a subprocess, s3fs pointed at it.

The pipeline runs in this process at the sizes of the pipeline tests (``_cfg`` of test_pipeline_workflow), so
every stage's Flyte edge is a bucket URI. Faults are injected into s3fs itself (the filesystem layer every write
goes through).
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import fsspec
import pandas as pd
import pytest
import s3fs

from lib.config import DataConfig, replace_in
from lib.sample.pipeline import DDMPipeline
from lib.storage import POINTER, StorageError, check_output_dir, download_published, publish_dir, resolve, stable_uri
from lib.train import checkpoint as ckpt
from lib.train.remote import MirrorCheckpoints, fetch_run
from lib.train.trainer import train
from tests.e2e.test_pipeline_workflow import PNG_MAGIC, _cfg, _trained
from tests.tiny_clips import TINY_EXPERT, tiny_train_data

MOTO = str(Path(sys.executable).parent / "moto_server")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_moto(**env: str) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen([MOTO, "-H", "127.0.0.1", "-p", str(port)], env={**os.environ, **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{url}/moto-api/", timeout=1)
            return proc, url
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"moto server on port {port} did not start")


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server for this module; s3fs (and flytekit's s3fs) reach it through the standard AWS variables."""
    proc, url = _start_moto()
    env = {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    s3fs.S3FileSystem.clear_instance_cache()
    yield s3fs.S3FileSystem()
    for k, v in saved.items():
        os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    s3fs.S3FileSystem.clear_instance_cache()
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def bucket(s3):
    name = f"ddm-{uuid.uuid4().hex[:10]}"
    s3.mkdir(name)
    return name


def _read(s3, uri: str) -> bytes:
    return s3.cat_file(uri)


@pytest.mark.slow
def test_pipeline_on_s3_kill_resume_skip_and_reevaluate(s3, bucket, monkeypatch, capsys, tmp_path):
    from workflows.pipeline import pipeline
    from workflows.reevaluate import reevaluate

    out = f"s3://{bucket}/runs/tiny"
    cfg = replace_in(_cfg(tmp_path / "unused"), output_dir=out)
    steps: dict[str, list[int]] = {}
    mirror, on_step = MirrorCheckpoints.on_checkpoint, MirrorCheckpoints.on_step

    def record(self, row):
        steps.setdefault(self.name, []).append(int(row["step"]))
        on_step(self, row)

    def killed_after_first_checkpoint(self, step, folder):
        mirror(self, step, folder)
        if self.name == "expert-01" and step == 2:
            shutil.rmtree(folder.parents[4])  # every task's local scratch goes with it: only the bucket remembers
            raise RuntimeError("expert-01 killed after its step-2 checkpoint")

    monkeypatch.setattr(MirrorCheckpoints, "on_step", record)
    monkeypatch.setattr(MirrorCheckpoints, "on_checkpoint", killed_after_first_checkpoint)
    with pytest.raises(Exception, match="expert-01 killed"):
        pipeline(cfg=cfg)
    (expert01,) = s3.glob(f"{bucket}/runs/tiny/stages/train/expert-01-*")
    assert [p.rsplit("/", 1)[-1] for p in s3.ls(f"{expert01}/checkpoints")] == ["step-0000002"]
    assert not s3.exists(f"{expert01}/model/{POINTER}")

    monkeypatch.setattr(MirrorCheckpoints, "on_checkpoint", mirror)
    steps.clear()
    capsys.readouterr()
    dest = pipeline(cfg=cfg)
    stdout = capsys.readouterr().out
    assert dest == f"{out}/results"
    assert steps["expert-01"] == [3, 4], "resumed from the bucket's step-2 checkpoint"
    assert "expert-00" not in steps and re.search(r"^expert-00: reused", stdout, re.M), "finished: from the bucket"
    assert steps["monolith"] == [1, 2, 3, 4, 5, 6, 7, 8], "the failed map task stopped the run before the monolith"

    # every stage is in the bucket, each published (pointer -> complete attempt)
    for stage in ("ingest", "encode", "embed", "cluster", "router", "ddm", "samples", "featnet", "evaluate"):
        (pointer,) = s3.glob(f"{bucket}/runs/tiny/stages/{stage}/*/{POINTER}")
        published = json.loads(_read(s3, pointer))
        attempt = f"{pointer.rsplit('/', 1)[0]}/attempts/{published['attempt']}"
        listed = {p.removeprefix(attempt + "/") for p in s3.find(attempt)}
        assert listed == set(published["files"]) or listed == {".empty"}, stage
    (ingest_key,) = s3.ls(f"{bucket}/runs/tiny/stages/ingest")
    ingest = resolve(f"s3://{ingest_key}")
    assert {"shard-00000.safetensors", "shard-00001.safetensors", "index.parquet"} <= {
        p.rsplit("/", 1)[-1] for p in s3.ls(ingest)
    }
    ckpts = s3.glob(f"{bucket}/runs/tiny/stages/train/*/checkpoints/step-*/manifest.json")
    assert len(ckpts) == 6, "two checkpoints kept per model, as locally"

    # the results: a DDM that loads, with the experts byte-identical to the trained ones; the reports
    ddm_dir = tmp_path / "ddm"
    assert download_published(f"{out}/results/ddm", ddm_dir)
    ddm = DDMPipeline.from_pretrained(ddm_dir)
    assert ddm.num_experts == 2 and not ddm.missing_experts
    trained = resolve(f"s3://{expert01}/model")
    weights = "diffusion_pytorch_model.safetensors"
    expert_file = next(ddm_dir.rglob(f"*01*/{weights}"))
    assert expert_file.read_bytes() == _read(s3, f"{trained}/{weights}")
    report = pd.read_parquet(resolve(f"{out}/results/eval_report.parquet"))
    assert {"real", "monolith", "ddm:topk"} <= set(report["method"])
    assert _read(s3, resolve(f"{out}/results/samples.png"))[:8] == PNG_MAGIC  # the contact sheet, published too

    capsys.readouterr()
    new = reevaluate(cfg=replace_in(cfg, sample={"num_steps": 4}), ddm_uri=f"{out}/results/ddm",
                     monolith_uri=f"{out}/results/monolith")  # fmt: skip
    stdout = capsys.readouterr().out
    assert new == f"{out}/reevaluation" and "sample:" in stdout and not _trained(stdout)
    again = pd.read_parquet(resolve(f"{out}/reevaluation/eval_report.parquet"))
    assert {"ddm:topk", "monolith"} <= set(again["method"])


def test_failed_checkpoint_upload_names_the_path_and_keeps_the_previous_checkpoint(s3, bucket, monkeypatch, tmp_path):
    data, cfg = tiny_train_data(12), TINY_EXPERT  # checkpoints every 3 of 12 steps
    remote = f"s3://{bucket}/stages/train/expert-00-x"
    failing = f"{bucket}/stages/train/expert-00-x/checkpoints/step-0000006/model.safetensors"
    put = s3fs.S3FileSystem._put_file

    async def faulty_put(self, lpath, rpath, *args, **kwargs):
        if rpath.removeprefix("s3://") == failing:
            raise OSError("injected: connection reset while writing")
        return await put(self, lpath, rpath, *args, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "_put_file", faulty_put)
    s3fs.S3FileSystem.clear_instance_cache()  # instances bind their sync methods when created
    with pytest.raises(StorageError, match=rf"^s3://{failing}: upload failed: .*injected"):
        train(data, cfg, tmp_path / "pod-1", 0, "expert-00", callbacks=[MirrorCheckpoints(4, "expert-00", remote)])
    monkeypatch.setattr(s3fs.S3FileSystem, "_put_file", put)
    s3fs.S3FileSystem.clear_instance_cache()

    fetch_run(remote, tmp_path / "pod-2")  # a retry on another node sees only the bucket
    found = ckpt.complete_checkpoints(tmp_path / "pod-2" / "checkpoints")
    assert [s for s, _ in found] == [3], "the half-written step 6 has no manifest and is ignored"
    groups, manifest = ckpt.load_checkpoint(found[-1][1])
    assert manifest["step"] == 3 and "model" in groups
    mirror = MirrorCheckpoints(4, "expert-00", remote)
    result = train(data, cfg, tmp_path / "pod-2", 0, "expert-00", callbacks=[mirror])
    assert result.resumed_from == 3 and result.steps == 12
    assert sorted(p.rsplit("/", 1)[-1] for p in s3.ls(f"{remote}/checkpoints")) == ["step-0000009", "step-0000012"]


def test_concurrent_publishers_never_leave_a_torn_folder(s3, bucket, tmp_path):
    dest = f"s3://{bucket}/stages/encode/k1"
    writers = []
    for name in ("a", "b"):
        folder = tmp_path / name
        for i in range(6):
            (folder / f"part-{i}").parent.mkdir(parents=True, exist_ok=True)
            (folder / f"part-{i}").write_bytes(f"{name}{i}".encode() * 2000)
        writers.append(folder)
    barrier, attempts = threading.Barrier(2), {}

    def publish(folder: Path) -> None:
        barrier.wait()
        attempts[folder.name] = publish_dir(folder, dest)

    threads = [threading.Thread(target=publish, args=(f,)) for f in writers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winner = resolve(dest)
    assert winner in attempts.values() and attempts["a"] != attempts["b"]
    origin = "a" if winner == attempts["a"] else "b"
    for i in range(6):
        assert _read(s3, f"{winner}/part-{i}") == f"{origin}{i}".encode() * 2000, "all files from one writer"
    for name, attempt in attempts.items():  # the losing attempt is complete too: a reader holding it is safe
        assert _read(s3, f"{attempt}/part-5") == f"{name}5".encode() * 2000
    assert stable_uri(f"{winner}/part-0") == f"{dest}/part-0"

    unfinished = f"s3://{bucket}/stages/encode/k2"  # files uploaded, then the writer died before its pointer
    s3.pipe_file(f"{bucket}/stages/encode/k2/attempts/20260101T000000-0123abcd/part-0", b"x")
    assert resolve(unfinished) is None and not download_published(unfinished, tmp_path / "k2")


def test_missing_bucket_is_one_clear_error_and_is_not_created(s3, tmp_path):
    from tasks.ingest import ingest_clips

    uri = "s3://no-such-bucket-ddm/run"
    with pytest.raises(Exception, match=r"s3://no-such-bucket-ddm/run: bucket 'no-such-bucket-ddm' does not exist"):
        ingest_clips(cfg=DataConfig(num_clips=8, frames=4, height=16, width=16), seed=0, output_dir=uri, videos=[],
                     cuts=[])  # fmt: skip
    assert not s3.exists("no-such-bucket-ddm")


def test_refused_credentials_are_one_clear_error_naming_the_uri(s3, monkeypatch):
    proc, url = _start_moto(INITIAL_NO_AUTH_ACTION_COUNT="0")  # this server checks credentials: ours are unknown
    try:
        monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": url})
        with pytest.raises(StorageError, match=r"^s3://locked/run: .*access refused by the store"):
            check_output_dir("s3://locked/run")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
