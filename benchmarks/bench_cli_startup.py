"""How fast `caphuman` answers when nothing heavy is needed: --help, a sub-command's --help, and
a typo (a missing photo), each as a fresh process, as a user runs them.

Usage: python benchmarks/bench_cli_startup.py [--runs 5] [--root OTHER_CHECKOUT]
Prints the median wall time of each command over ``--runs`` (after one warm-up run that fills
the file-system cache).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def median_seconds(command: list[str], runs: int, root: Path) -> float:
    subprocess.run(command, cwd=root, capture_output=True)
    durations = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, cwd=root, capture_output=True)
        durations.append(time.perf_counter() - start)
    return statistics.median(durations)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--root", type=Path, default=ROOT, help="checkout to time (its caphuman/ is imported; default: this one)")
    args = parser.parse_args()
    cli = [sys.executable, "-m", "caphuman.cli"]
    with tempfile.TemporaryDirectory() as folder:
        commands = {
            "python -c pass (interpreter start)": [sys.executable, "-c", "pass"],
            "caphuman --help": [*cli, "--help"],
            "caphuman sample --help": [*cli, "sample", "--help"],
            "caphuman sample --ref missing.jpg": [
                *cli,
                "sample",
                "--config",
                "configs/tiny.yaml",
                "--ref",
                "missing.jpg",
                "--prompt",
                "x",
                "--out",
                str(Path(folder) / "out"),
            ],
        }
        for name, command in commands.items():
            print(f"{name:40s} {median_seconds(command, args.runs, args.root):6.2f} s")


if __name__ == "__main__":
    main()
