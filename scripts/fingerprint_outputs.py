"""Fingerprint the tiny config's sample and eval outputs, to prove a refactor changes nothing.

Runs a fixed set of ``caphuman`` commands on ``configs/tiny.yaml`` (random-initialised models, so
no weights are needed) with the photos in ``assets/``, each in a fresh process, and prints the
sha256 of every image they write. Run it before and after a change and diff the two listings:
a structural change must leave every line identical.

    python scripts/fingerprint_outputs.py --out /tmp/before > before.txt
    python scripts/fingerprint_outputs.py --out /tmp/after > after.txt && diff before.txt after.txt

Images and score tables only: settings files and logs hold timings, paths and dates that differ run to run.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.yaml")
SMOKE = str(ROOT / "configs" / "benchmarks" / "smoke.yaml")
ASSETS = ROOT / "assets"
# Images, and the eval's per-image scores (no timings in them).
FINGERPRINTED_SUFFIXES = {".png", ".jpg", ".webp", ".csv"}

logger = logging.getLogger("fingerprint")


def cases(out: Path) -> dict[str, list[str]]:
    """Each case: a name (its output folder) and the ``caphuman`` arguments that fill it."""
    reference = str(ASSETS / "astronaut.jpg")
    common = ["--config", TINY, "--device", "cpu", "--seed", "7", "--steps", "3"]
    identities = out / "identities"
    return {
        "sample_plain": ["sample", *common, "--ref", reference, "--prompt", "a photo of a person on the beach", "--num-images", "2", "--out"],
        "sample_pose_ref": [
            "sample",
            *common,
            "--ref",
            reference,
            "--pose-ref",
            str(ASSETS / "grace_hopper.jpg"),
            "--modes",
            "pose",
            "--prompt",
            "a portrait of a person, oil painting",
            "--out",
        ],
        "sample_yaw": [
            "sample",
            *common,
            "--ref",
            str(ASSETS / "cameraman.jpg"),
            "--yaw",
            "25",
            "--pitch",
            "-10",
            "--guidance-scale",
            "5",
            "--prompt",
            "a person in a park",
            "--out",
        ],
        "eval_smoke": [
            "eval",
            "--benchmark",
            SMOKE,
            "--config",
            TINY,
            "--identities",
            str(identities),
            "--device",
            "cpu",
            "--method",
            "all",
            "--out",
        ],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="an empty or new folder for the outputs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if args.out.exists() and any(args.out.iterdir()):
        parser.error(f"{args.out} is not empty; give a new folder")
    identities = args.out / "identities"
    identities.mkdir(parents=True)
    for name in ("astronaut.jpg", "grace_hopper.jpg"):
        (identities / name).write_bytes((ASSETS / name).read_bytes())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    for name, arguments in cases(args.out).items():
        logger.info("running %s", name)
        subprocess.run([sys.executable, "-m", "caphuman.cli", *arguments, str(args.out / name)], check=True, env=env, cwd=ROOT)
        for path in sorted((args.out / name).rglob("*")):
            if path.suffix.lower() in FINGERPRINTED_SUFFIXES:
                print(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.relative_to(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
