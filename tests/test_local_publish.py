"""Local stage folders publish by rename: a reader never sees a half-written stage, two runs computing the same
stage at once leave one complete folder, and what a crash leaves behind is replaced or pruned."""

import os
import threading
import time

import pytest

from lib.storage import LOCAL_ATTEMPTS, MARKS, attempt_root, local_attempt, prune_attempts, publish_local


def _fill(attempt, text: str, files: int = 20) -> None:
    for i in range(files):
        (attempt / f"part-{i:02d}.txt").write_text(text)


def test_the_first_of_two_concurrent_runs_wins_and_the_other_reads_its_complete_folder(tmp_path):
    final = tmp_path / "stages" / "encode" / "abc123"
    a, b = local_attempt(final), local_attempt(final)
    assert a != b and a.parent == b.parent == final.parent / LOCAL_ATTEMPTS and not final.exists()
    _fill(a, "run a")
    _fill(b, "run b")
    assert attempt_root(a / "part-00.txt") == a and attempt_root(final) is None
    assert publish_local(a) == final and publish_local(b) == final
    assert {p.read_text() for p in final.glob("part-*.txt")} == {"run a"}
    assert (final.parent / MARKS / final.name).is_file()
    assert sorted(p.name for p in final.iterdir()) == [f"part-{i:02d}.txt" for i in range(20)]  # only the stage's files
    assert not list((final.parent / LOCAL_ATTEMPTS).iterdir()), "the losing attempt is removed"


def test_many_runs_publishing_at_once_leave_one_whole_folder(tmp_path):
    final = tmp_path / "stage" / "key"
    seen, errors = [], []

    def run(name: str) -> None:
        try:
            attempt = local_attempt(final)
            _fill(attempt, name)
            seen.append(publish_local(attempt))
        except Exception as exc:  # noqa: BLE001 - any failure of a racing run fails the test below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(f"run {i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and seen == [final] * 8
    assert len({p.read_text() for p in final.glob("part-*.txt")}) == 1 and len(list(final.glob("part-*"))) == 20


def test_a_folder_written_in_place_by_an_older_version_is_replaced(tmp_path):
    final = tmp_path / "stage" / "key"
    final.mkdir(parents=True)
    (final / "half-written.txt").write_text("torn")  # no mark beside it: not a published folder
    attempt = local_attempt(final)
    _fill(attempt, "new", files=2)
    publish_local(attempt)
    assert sorted(p.name for p in final.iterdir()) == ["part-00.txt", "part-01.txt"]


def test_stale_attempts_of_crashed_runs_are_pruned_and_fresh_ones_kept(tmp_path, caplog):
    final = tmp_path / "stage" / "key"
    crashed = local_attempt(final)
    old = time.time() - 7 * 3600
    os.utime(crashed, (old, old))
    running = local_attempt(final)  # pruning runs here: the crashed one goes, this one is new
    assert not crashed.exists() and running.exists()
    assert "pruned 1 stale attempt folder(s)" in caplog.text
    assert prune_attempts(final.parent / LOCAL_ATTEMPTS, 3600) == 0


@pytest.mark.parametrize("fresh", [True, False])
def test_stage_dir_and_publish_stage_locally(tmp_path, fresh):
    from tasks.common import publish_stage, stage_dir

    out = stage_dir(str(tmp_path), "sample", "key part", fresh=fresh)
    (out / "videos.bin").write_bytes(b"x")
    published = publish_stage(str(tmp_path), out / "videos.bin")
    stage = tmp_path / "stages" / "sample"
    assert published.startswith(str(stage)) and LOCAL_ATTEMPTS not in published
    assert open(published, "rb").read() == b"x"


def test_a_bucket_prunes_losing_attempts_once_stale_never_the_published_one(tmp_path, monkeypatch):
    """Losers of concurrent publishes (or uploads a crash cut short) go once older than the grace period; the pointed
    attempt and young losers stay, and every file of the published folder still resolves."""
    import fsspec

    from lib.storage import ATTEMPTS, STALE_ATTEMPT_S, publish_dir, resolve

    fs = fsspec.filesystem("memory")
    dest = "memory://prune-bucket/run/stage"
    local = tmp_path / "stage"
    local.mkdir()
    (local / "a.txt").write_text("one")
    real_gmtime, then = time.gmtime, time.time() - 2 * STALE_ATTEMPT_S
    monkeypatch.setattr(time, "gmtime", lambda *a: real_gmtime(*a) if a else real_gmtime(then))  # named long ago
    old = publish_dir(local, dest)
    monkeypatch.undo()
    young = publish_dir(local, dest)  # points here; the old one is a loser past the grace period: pruned
    names = {p.rsplit("/", 1)[-1] for p in fs.ls(f"/prune-bucket/run/stage/{ATTEMPTS}", detail=False)}
    assert old.rsplit("/", 1)[-1] not in names and young.rsplit("/", 1)[-1] in names
    latest = publish_dir(local, dest)  # the young loser stays (not stale yet), the new one is pointed to
    names = {p.rsplit("/", 1)[-1] for p in fs.ls(f"/prune-bucket/run/stage/{ATTEMPTS}", detail=False)}
    assert {young.rsplit("/", 1)[-1], latest.rsplit("/", 1)[-1]} <= names
    assert resolve(dest) == latest and fs.cat(f"{latest.removeprefix('memory://')}/a.txt") == b"one"


def test_a_results_folder_is_replaced_whole_and_leaves_nothing_beside_it(tmp_path):
    """``publish_folder`` on a disk: the second publication replaces the first as a unit (no file of the first
    survives in it) and no temporary folder is left beside it."""
    from lib.storage import publish_folder

    first, second = tmp_path / "a", tmp_path / "b"
    (first / "sub").mkdir(parents=True)
    (first / "sub" / "old.txt").write_text("old")
    (first / "same.txt").write_text("1")
    second.mkdir()
    (second / "same.txt").write_text("2")
    dest = tmp_path / "out" / "results"
    publish_folder(first, str(dest))
    assert (dest / "sub" / "old.txt").read_text() == "old"
    publish_folder(second, str(dest))
    assert sorted(p.name for p in dest.rglob("*")) == ["same.txt"] and (dest / "same.txt").read_text() == "2"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["results"]
