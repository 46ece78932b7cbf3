"""Ingest throughput and peak memory of the built-in dataset at two sizes, side by side.

Each size runs in a fresh subprocess so peak RSS (ru_maxrss) belongs to that run alone. Memory should stay
roughly flat as the count grows (streaming: one shard in memory at a time).

    python benchmarks/ingest_throughput.py --sizes 1000 10000
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time

CHILD = """
import json, sys, time
from lib.config import DataConfig
from lib.data.ingest import ingest
n, out = int(sys.argv[1]), sys.argv[2]
t0 = time.perf_counter()
result = ingest(DataConfig(num_clips=n), seed=0, out_dir=out)
print(json.dumps({"clips": len(result.index), "seconds": time.perf_counter() - t0}))
"""


def run(n: int) -> dict:
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", CHILD, str(n), out], capture_output=True, text=True, check=True)
        wall = time.perf_counter() - t0
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # max over children so far
    return {**stats, "wall": wall, "peak_mib": peak_mib}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    args = parser.parse_args()
    rows = [run(n) for n in sorted(args.sizes)]  # ascending, so the running max is each size's own peak
    print(f"{'clips':>8} {'ingest s':>9} {'clips/s':>8} {'peak RSS MiB':>13}")
    for r in rows:
        print(f"{r['clips']:>8} {r['seconds']:>9.1f} {r['clips'] / r['seconds']:>8.0f} {r['peak_mib']:>13.0f}")
    ratio = rows[-1]["peak_mib"] / rows[0]["peak_mib"]
    print(f"peak memory ratio {rows[-1]['clips']}/{rows[0]['clips']} clips: {ratio:.2f}x")


if __name__ == "__main__":
    main()
