"""The fault campaign's pieces (benchmarks/faults.py, benchmarks/fault_points.py): a whole campaign runs the
pipeline dozens of times (about a minute each on one thread), so the tests check what decides its numbers: where kills
land, that a kill takes the whole process group at exactly its point, how repeated work and torn folders are counted,
and that a flipped bit counts as detected only when the error names the file."""

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

from benchmarks.fault_points import stable
from benchmarks.faults import (
    CATEGORIES,
    Run,
    bit_flips,
    category,
    flip_bit,
    leftovers,
    plan_kills,
    repeated_steps,
    torn_stages,
)
from lib.data.shards import ShardWriter, iter_shards, read_index
from lib.storage import publish_local

ROOT = Path(__file__).resolve().parents[1]


def test_points_are_named_without_their_random_parts():
    assert stable("stages/ddm/.attempts/9841fb2a6d2719bf-20260101T010203-abcdef12/.ddm.k2j4_x9z/ddm.json") == (
        "stages/ddm/.attempts/*/.ddm/ddm.json"
    )
    assert stable("stages/train/k/checkpoints/.step-0000003.ab_d0fgh.tmp/model.safetensors") == (
        "stages/train/k/checkpoints/.step-0000003.tmp/model.safetensors"
    )
    assert (
        stable("stages/encode/k/attempts/20260101T010203-abcdef12/codec.json")
        == "stages/encode/k/attempts/*/codec.json"
    )
    assert stable("stages/train/k/.model.old.4242") == "stages/train/k/.model.old"
    assert (
        stable("stages/train/expert-01-e1b485d25d923813/model/PUBLISHED.json")
        == "stages/train/expert-01-*/model/PUBLISHED.json"
    )


def _reference() -> list[dict]:
    points = [{"kind": "step", "detail": f"expert-00 {s}"} for s in range(1, 7)]
    points += [{"kind": "ckpt", "detail": f"stages/train/k/checkpoints/.step-000000{s}.tmp/model.safetensors"}
               for s in (3, 6)]  # fmt: skip
    points += [{"kind": "rename", "detail": "stages/ingest/.attempts/*/shard-00000.safetensors"}]
    points += [{"kind": "rename", "detail": "stages/ingest/*"}, {"kind": "sample", "detail": "velocity"}]
    points += [{"kind": "evaluate", "detail": "features"}, {"kind": "copy", "detail": "results/ddm/ddm.json"}]
    points += [{"kind": "rename", "detail": "mlflow-unrelated/x"}]
    return [{**p, "n": 0, "ref": i} for i, p in enumerate(points)]


def test_kills_spread_over_every_category_and_are_drawn_from_the_seed():
    reference = _reference()
    assert [category(p) for p in reference[8:]] == ["ingest/encode write", "publish", "sampling", "evaluation",
                                                    "publish", None]  # fmt: skip
    kills = plan_kills(reference, 6, np.random.default_rng(0))
    assert sorted(k.category for k in kills) == sorted(CATEGORIES), "one per category before any gets a second"
    assert len({k.target for k in kills}) == 6 and all(reference[k.target]["detail"] in k.point for k in kills)
    assert all(k.delay_s == 0 for k in kills), "each category's first kill lands at its point"
    many = plan_kills(reference, 12, np.random.default_rng(0))
    for c in CATEGORIES:  # then at the point and a random delay after it, in turn
        delays = [k.delay_s for k in many if k.category == c]
        assert all((d == 0) == (i % 2 == 0) and (d == 0 or 0.05 <= d <= 0.5) for i, d in enumerate(delays))
    again = plan_kills(reference, 6, np.random.default_rng(0))
    assert [(k.target, k.delay_s) for k in again] == [(k.target, k.delay_s) for k in kills]
    assert len(plan_kills(reference, 50, np.random.default_rng(1))) == 13, "never more kills than points"


def test_repeated_steps_are_those_a_rerun_computes_again_for_the_model_that_repeats_most():
    def run(*steps: str) -> Run:
        return Run(0, [{"kind": "step", "detail": s} for s in steps], 1.0, "")

    done = {"expert-00 1", "expert-00 2", "expert-00 3", "expert-00 4", "monolith 1"}
    assert repeated_steps(run("expert-00 4", "expert-00 5", "monolith 1"), done) == 1
    assert repeated_steps(run("expert-01 1"), done) == 0


CHILD = textwrap.dedent("""
    import subprocess, sys, time
    from pathlib import Path
    from benchmarks.fault_points import Points
    trace, reference = Path(sys.argv[1]), Path(sys.argv[2])
    grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    Path(sys.argv[3]).write_text(str(grandchild.pid))
    points = Points(trace, "/out", reference, kill_at=3)
    for i in range(6):
        points.hit("step", "unknown to the reference")  # never a trigger
        points.hit("step", f"s {i}")
    print("survived", flush=True)
""")


def test_a_kill_takes_the_whole_process_group_at_the_first_point_at_or_after_its_target(tmp_path):
    reference = tmp_path / "reference.jsonl"
    reference.write_text("".join(json.dumps({"kind": "step", "detail": f"s {i}", "n": 0}) + "\n" for i in range(6)))
    trace, pid_file = tmp_path / "trace.jsonl", tmp_path / "grandchild"
    proc = subprocess.run([sys.executable, "-c", CHILD, str(trace), str(reference), str(pid_file)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, start_new_session=True)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL and "survived" not in proc.stdout
    points = [json.loads(line) for line in trace.read_text().splitlines()]
    assert points[-1]["detail"] == "s 3" and points[-1]["ref"] == 3 and points[-2]["ref"] is None
    grandchild = int(pid_file.read_text())
    deadline = time.time() + 10
    while _alive(grandchild) and time.time() < deadline:
        time.sleep(0.05)
    assert not _alive(grandchild), "the kill took the process the run had started too"


def _alive(pid: int) -> bool:
    """Running (a killed process may linger as a zombie until its new parent reaps it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _ingest_folder(folder: Path) -> Path:
    writer = ShardWriter(folder, shard_size=2, source="builtin")
    for i in range(5):
        writer.add(f"c{i}", np.full((2, 4, 4, 3), i, dtype=np.uint8), f"caption {i}")
    writer.close()
    return folder


def test_flip_bit_changes_exactly_one_bit(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(bytes(64))
    bit = flip_bit(path, np.random.default_rng(0))
    data = np.frombuffer(path.read_bytes(), dtype=np.uint8)
    assert np.unpackbits(data).sum() == 1 and np.unpackbits(data)[bit // 8 * 8 + 7 - bit % 8] == 1


def test_a_flip_is_detected_only_by_an_error_naming_the_file(tmp_path):
    folder = _ingest_folder(tmp_path / "ingest")

    def load(p: Path) -> None:
        [frames.sum() for _, frames in iter_shards(p, read_index(p))]

    def silent(p: Path) -> None:  # reads the index only: a flipped shard goes unseen
        read_index(p)

    kinds = {"ingest shard": (folder, load), "careless": (folder, silent)}
    report = bit_flips(kinds, np.random.default_rng(0), tmp_path / "work")
    assert report["ingest shard"]["tried"] == 5 and report["ingest shard"]["detected"] == 5
    careless = {t["file"]: t["outcome"] for t in report["careless"]["trials"]}
    assert careless["shard-00000.safetensors"] == "loaded" and careless["index.parquet"] == "detected"
    assert (folder / "SHA256SUMS").is_file() and read_index(folder).shape[0] == 5, "the original is untouched"


def test_torn_stages_are_folders_without_their_mark_or_that_fail_to_load(tmp_path):
    stages = tmp_path / "stages" / "ingest"
    good = stages / ".attempts" / "0123456789abcdef-20260101T000000-00000000"
    publish_local(_ingest_folder(good))
    assert torn_stages(tmp_path) == ([], 0)
    _ingest_folder(stages / "fedcba9876543210")  # written in place, no mark: a reader cannot know it is whole
    (stages / ".attempts" / "1111111111111111-20260101T000000-11111111").mkdir()  # a crashed run's attempt
    shard = stages / "0123456789abcdef" / "shard-00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:-1])  # published, then torn
    torn, attempts = torn_stages(tmp_path)
    assert attempts == 1 and len(torn) == 2
    assert leftovers(tmp_path) == ["stages/ingest/.attempts/1111111111111111-20260101T000000-11111111"]
    assert "fedcba9876543210: no publish mark" in torn[1] and "shard-00001.safetensors" in torn[0]
