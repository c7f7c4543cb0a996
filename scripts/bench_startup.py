"""How fast the command line answers: ``cvtrain --help``, ``cvtrain fit --help`` and a spec mistake, beside a bare
``python -c pass`` and ``python -c "import torch"`` (what every answer cost while the package imported torch first).

    python scripts/bench_startup.py [--repeats 5]

Each command runs ``--repeats`` times in a fresh process; the median wall time is printed, with the ratio to the
bare interpreter. The goal (issue "Every mistake answered at once"): each cvtrain answer within 1 s on 2 cores.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPEC = str(REPO / "configs" / "detection" / "quickstart.yaml")
COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "python -c 'import torch'": [sys.executable, "-c", "import torch"],
    "cvtrain --help": [sys.executable, "-m", "cvtrain", "--help"],
    "cvtrain fit --help": [sys.executable, "-m", "cvtrain", "fit", "--help"],
    "cvtrain fit (spec mistake)": [sys.executable, "-m", "cvtrain", "fit", "-c", SPEC, "train.max_epoch=3"],
    "cvtrain fit (unknown flag)": [sys.executable, "-m", "cvtrain", "fit", "-c", SPEC, "--max-epoch", "3"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    times = {}
    for name, command in COMMANDS.items():
        runs = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            subprocess.run(command, capture_output=True, cwd=REPO, check=False)
            runs.append(time.perf_counter() - started)
        times[name] = statistics.median(runs)
    bare = times["python -c pass"]
    print(f"{'command':<30} {'median s':>9} {'x python':>9}")
    for name, seconds in times.items():
        print(f"{name:<30} {seconds:>9.3f} {seconds / bare:>9.1f}")
    slowest = max(seconds for name, seconds in times.items() if name.startswith("cvtrain"))
    print(f"slowest cvtrain answer: {slowest:.3f} s ({'within' if slowest <= 1 else 'over'} the 1 s goal)")


if __name__ == "__main__":
    main()
