"""Every benchmark, one after the other (each prints its figures and ratios):

    python3 -m benchmarks.run_all [--quick]

Runs at a raised priority (nice -5) when allowed, so that background jobs disturb less.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

QUICK = {
    "bench_engine": ["--repeats", "3"],
    "bench_http": ["--repeats", "3", "--rounds", "1", "--images", "8"],
    "bench_gpu": ["--repeats", "5"],
    "bench_precision": ["--repeats", "2", "--sizes", "512"],
    "bench_video": ["--frames", "3", "--rounds", "1", "--requests", "6"],
    "bench_lite": ["--repeats", "2", "--sizes", "512"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (noisier)")
    args = parser.parse_args()
    try:
        os.nice(-5)  # inherited by the benchmark processes
    except PermissionError:
        print("(not allowed to raise the priority: running at normal priority)")
    failed = []
    for name in QUICK:
        print(f"\n===== benchmarks.{name} =====", flush=True)
        extra = QUICK[name] if args.quick else []
        if subprocess.run([sys.executable, "-m", f"benchmarks.{name}", *extra]).returncode:
            failed.append(name)
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
