"""Raw-data smoke run anyone can repeat: long videos with known hard cuts -> scenes -> quality filters -> shards.

1. Generates ``--videos`` videos (seeded by the config's seed) of back-to-back FFmpeg test sources with sidecar
   captions, plus the bad inputs users hold: a corrupt file, a video without a caption, a non-UTF-8 sidecar and a
   video without cuts. Written to ``data.raw`` of ``configs/raw-smoke.yaml``.
2. Cuts every video (``lib.data.raw.cut_video``, what each map-task element runs) and scores the detector against
   the known cuts: precision/recall with a tolerance of ``--tolerance-frames`` source frames.
3. Ingests the windows (``lib.data.ingest.ingest``: decode, motion filter, shards) and counts kept, filtered per
   rule and quarantined per reason.
4. Peak RSS of scene-cutting one ``--long-minutes`` video (tiny frames, cheap to generate) in a fresh subprocess,
   beside a video a tenth as long: memory must not grow with length (RSS after imports is reported too).

    python benchmarks/raw_smoke.py                       # ~2-3 min on 2 cores
    pyflyte run workflows/pipeline.py pipeline --cfg configs/raw-smoke.yaml   # then the whole pipeline on it
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from lib.config import load_config
from lib.data.ingest import ingest
from lib.data.raw import cut_video, list_raw_videos
from lib.data.scenes import ScenePlan
from lib.data.testsrc import MOVING_SOURCES, SOURCES, write_cut_video
from lib.io import atomic_write
from lib.seeding import numpy_rng

ROOT = Path(__file__).resolve().parents[1]


log = logging.getLogger("raw_smoke")

FPS, WIDTH, HEIGHT = 24, 64, 48  # source videos; clips are resampled to data.fps and data.height x data.width
LONG_SIZE = (32, 24)  # the long-video memory probe: tiny frames so 30 minutes encode in seconds

CHILD = """
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
from lib.data.raw import RawVideo, cut_video
from lib.data.scenes import ScenePlan
plan = ScenePlan(**json.loads(sys.argv[3]))
imports_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
table = cut_video(RawVideo(0, "long", sys.argv[2], "a long test pattern video"), plan)
print(json.dumps({"seconds": time.perf_counter() - t0, "rows": len(table), "imports_kib": imports_kib,
                  "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "scene_starts": sorted(set(table["scene_start"].dropna().tolist()))}))
"""


def _segments(rng: np.random.Generator, n: int, lo: float, hi: float, short_p: float) -> list[tuple[str, int]]:
    """n segments of distinct consecutive sources; a share ``short_p`` is 0.3 s (shorter than any clip)."""
    out, last = [], None
    for _ in range(n):
        source = str(rng.choice([s for s in SOURCES if s != last]))
        seconds = 0.3 if rng.random() < short_p else rng.uniform(lo, hi)
        out.append((source, max(1, round(seconds * FPS))))
        last = source
    return out


def generate(folder: Path, count: int, seed: int) -> dict[str, list[float]]:
    """The smoke videos and sidecars; returns the true cut times per video id (only videos that get detected)."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    rng = numpy_rng(seed, "raw_smoke", "videos")
    truth = {}
    for i in range(count):
        segments = _segments(rng, int(rng.integers(3, 8)), 1.5, 8.0, short_p=0.15)
        name = f"video{i:03d}"
        truth[name] = write_cut_video(folder / f"{name}.mp4", segments, WIDTH, HEIGHT, FPS)
        sources = ", ".join(dict.fromkeys(s for s, _ in segments))
        (folder / f"{name}.txt").write_text(f"a test pattern video cycling through {sources}\n")
    truth["nocut"] = write_cut_video(folder / "nocut.mp4", [(str(rng.choice(MOVING_SOURCES)), 20 * FPS)],
                                     WIDTH, HEIGHT, FPS)  # fmt: skip
    (folder / "nocut.txt").write_text("one unbroken test pattern\n")
    write_cut_video(folder / "nocaption.mp4", [("testsrc", 3 * FPS)], WIDTH, HEIGHT, FPS)
    write_cut_video(folder / "latin1.mp4", [("testsrc2", 3 * FPS)], WIDTH, HEIGHT, FPS)
    (folder / "latin1.txt").write_bytes("une mire de t\xe9l\xe9vision".encode("latin-1"))
    (folder / "corrupt.mp4").write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (folder / "corrupt.txt").write_text("a file that is not a video\n")
    return truth


def match_cuts(truth: list[float], found: list[float], tolerance: float) -> int:
    """True positives: greedy one-to-one matching of detected to true cuts within ``tolerance`` seconds."""
    free, hits = list(found), 0
    for t in truth:
        near = [f for f in free if abs(f - t) <= tolerance]
        if near:
            free.remove(min(near, key=lambda f: abs(f - t)))
            hits += 1
    return hits


def long_video_probe(folder: Path, minutes: float, plan: ScenePlan, seed: int) -> dict:
    """Generate one long tiny video with a cut every 20-60 s and scene-cut it in a fresh subprocess."""
    rng = numpy_rng(seed, "raw_smoke", "long", str(minutes))
    segments, total = [], 0.0
    while total < minutes * 60:
        seconds = min(rng.uniform(20, 60), minutes * 60 - total + 1)
        segments.append((str(rng.choice([s for s in MOVING_SOURCES if not segments or s != segments[-1][0]])),
                         round(seconds * FPS)))  # fmt: skip
        total += seconds
    path = folder / f"long-{minutes:g}min.mp4"
    t0 = time.perf_counter()
    truth = write_cut_video(path, segments, *LONG_SIZE, FPS)
    generate_s = time.perf_counter() - t0
    fields = {k: getattr(plan, k) for k in plan.__dataclass_fields__}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), str(path), json.dumps(fields)],
                          capture_output=True, text=True, check=True)  # fmt: skip
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    found = [s for s in stats["scene_starts"] if s > 0]
    hits = match_cuts(truth, found, 2 / FPS)
    return {"minutes": minutes, "frames": round(total * FPS), "size": f"{LONG_SIZE[0]}x{LONG_SIZE[1]}",
            "generate_s": round(generate_s, 1), "cut_s": round(stats["seconds"], 1),
            "wall_s": round(time.perf_counter() - t0, 1), "peak_rss_mib": round(stats["peak_kib"] / 1024, 1),
            "rss_after_imports_mib": round(stats["imports_kib"] / 1024, 1),
            "true_cuts": len(truth), "found_cuts": len(found), "matched": hits,
            "file_mib": round(path.stat().st_size / 2**20, 1)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cfg", default=str(ROOT / "configs" / "raw-smoke.yaml"))
    parser.add_argument("--videos", type=int, default=12)
    parser.add_argument("--tolerance-frames", type=int, default=2)
    parser.add_argument("--long-minutes", type=float, default=30.0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "raw_smoke.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the refusals are counted below, not logged one by one
    cfg = load_config(args.cfg)
    raw = Path(cfg.data.raw) if Path(cfg.data.raw).is_absolute() else ROOT / cfg.data.raw
    data = dataclasses.replace(cfg.data, raw=str(raw))
    plan = ScenePlan.from_config(data)

    t0 = time.perf_counter()
    truth = generate(raw, args.videos, cfg.seed)
    generate_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    videos = list_raw_videos(data.raw, data.columns)
    cuts = [cut_video(v, plan) for v in videos]
    cut_s = time.perf_counter() - t0
    tp = fp = fn = 0
    for video, table in zip(videos, cuts, strict=True):
        if video.video_id in truth:
            found = sorted({s for s in table["scene_start"].dropna() if s > 0})
            hits = match_cuts(truth[video.video_id], found, args.tolerance_frames / FPS)
            tp, fp, fn = tp + hits, fp + len(found) - hits, fn + len(truth[video.video_id]) - hits

    t0 = time.perf_counter()
    work = raw.parent / "smoke-shards"
    result = ingest(data, cfg.seed, work, videos, cuts)
    ingest_s = time.perf_counter() - t0
    windows = sum(int((t["reason"] == "").sum()) for t in cuts)
    scenes = sum(t.loc[t["scene"] >= 0, ["video_row", "scene"]].drop_duplicates().shape[0] for t in cuts)

    probe_dir = raw.parent / "long"
    probe_dir.mkdir(parents=True, exist_ok=True)
    short = long_video_probe(probe_dir, args.long_minutes / 10, plan, cfg.seed)
    long = long_video_probe(probe_dir, args.long_minutes, plan, cfg.seed)
    shutil.rmtree(probe_dir)

    report = {
        "config": str(Path(args.cfg).relative_to(ROOT)) if Path(args.cfg).is_relative_to(ROOT) else args.cfg,
        "videos": len(videos),
        "videos_with_known_cuts": len(truth),
        "true_cuts": tp + fn,
        "detected_cuts": tp + fp,
        "matched_cuts": tp,
        "tolerance_frames": args.tolerance_frames,
        "precision": round(tp / max(tp + fp, 1), 4),
        "recall": round(tp / max(tp + fn, 1), 4),
        "scenes": scenes,
        "windows": windows,
        "clips_kept": len(result.index),
        "filtered_by_rule": dict(Counter(result.filtered["rule"])),
        "quarantined_by_reason": dict(Counter(result.quarantine["reason"])),
        "motion_kept": {q: round(float(result.index["motion"].quantile(q)), 3) for q in (0.1, 0.5, 0.9)},
        "seconds": {"generate": round(generate_s, 1), "scene_cut": round(cut_s, 1),
                    "ingest_filter": round(ingest_s, 1)},  # fmt: skip
        "long_video_probe": [short, long],
        "summary": result.summary(),
    }
    text = json.dumps(report, indent=2)
    atomic_write(Path(args.out), lambda tmp: Path(tmp).write_text(text + "\n"))
    print(text)


if __name__ == "__main__":
    main()
