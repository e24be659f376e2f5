"""Run a benchmark (HumanIPHC-shaped): generate with resume, score, and write tables, plots and grids.

Generates every (method, identity, prompt, head condition, seed) image that is not yet in --out,
then scores all of them (identity similarity, CLIP-T, prompt accuracy, head-coefficient RMSE,
head-pose error, face detection rate, diversity across seeds) and writes --out/report/:
per_image.csv, summary.csv, per_condition.csv, table.md, two plots and a sample grid per identity.
A rerun skips finished images and reuses their cached scores. --out must be new, empty or an
earlier eval run; one process at a time writes it.

Many GPUs: under torchrun every rank generates and scores its own share (``--batch-size`` images
per pipeline call), then rank 0 writes the one report. As separate jobs (a SLURM array, say),
give each ``--part i/N`` and, when all are done, run the same command once with ``--merge``.
A part that died is made up by running it again: finished images are skipped.

Examples:
  caphuman eval --benchmark configs/benchmarks/smoke.yaml --config configs/tiny.yaml \\
      --identities photos/ --out runs/smoke --method caphuman --method text-only
  caphuman eval --benchmark configs/benchmarks/humaniphc.yaml --config configs/caphuman_sd15.yaml \\
      --weights checkpoints --identities humaniphc_faces/ --out runs/humaniphc --method all --device cuda
  torchrun --nproc-per-node 8 -m caphuman.cli eval --benchmark configs/benchmarks/humaniphc.yaml \
      --config configs/caphuman_sd15.yaml --identities humaniphc_faces/ --out runs/humaniphc --method all --batch-size 8
  caphuman eval ... --part $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT   (each job), then: caphuman eval ... --merge
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path

from caphuman.checks import positive_int
from caphuman.config import HEAD_PRIORS, IDENTITY_MODELS, load_config

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--benchmark", required=True, help="benchmark spec (configs/benchmarks/humaniphc.yaml or smoke.yaml)")
    parser.add_argument("--identities", required=True, metavar="DIR", help="folder of reference photos, one per identity (optional subjects.yaml)")
    parser.add_argument("--out", required=True, metavar="RUN", help="run folder (rerunning into it resumes)")
    parser.add_argument(
        "--method",
        action="append",
        metavar="NAME",
        help="caphuman, text-only, caphuman-no-head, all, or package.module:function (repeatable; default caphuman)",
    )
    parser.add_argument("--config", default="configs/caphuman_sd15.yaml", help="model + sampling config (YAML)")
    parser.add_argument("--weights", default="checkpoints", help="folder with the weights files (see checkpoints/README.md)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--head-prior", choices=sorted(HEAD_PRIORS), help="override model.head_prior (used for hints and for re-estimation)")
    parser.add_argument("--steps", type=positive_int(), help="override sampling.num_inference_steps")
    parser.add_argument("--max-identities", type=positive_int(), help="use only the first N identities")
    parser.add_argument("--id-model", default="auto", choices=IDENTITY_MODELS, help="evaluation face recogniser (auto: FaceNet, ArcFace, then dlib)")
    parser.add_argument("--clip-model", help="CLIP model folder for CLIP-T (default: <weights>/<model.clip_vision>)")
    parser.add_argument(
        "--batch-size", type=int, default=1, help="images per pipeline call (several prompts, conditions and seeds of one identity; default 1)"
    )
    parser.add_argument(
        "--part",
        metavar="I/N",
        help="generate and score only part I of N (0-based) of the work, for job arrays; then run once with --merge. "
        "Not with torchrun, whose ranks split the work already",
    )
    stages = parser.add_mutually_exclusive_group()
    stages.add_argument("--generate-only", action="store_true", help="generate, do not score")
    stages.add_argument("--score-only", action="store_true", help="score and report the images already in --out")
    stages.add_argument(
        "--merge", action="store_true", help="after all --part jobs: score what is left and write the one report (warns about missing images)"
    )


def resolve_methods(names: list[str] | None):
    from caphuman.eval.methods import DEFAULT_METHODS, get_method

    names = names or ["caphuman"]
    expanded: list[str] = []
    for name in names:
        for part in (p.strip() for p in name.split(",")):
            for item in DEFAULT_METHODS if part == "all" else (part,):
                if item and item not in expanded:
                    expanded.append(item)
    return [get_method(name) for name in expanded]


# What an eval run writes into --out (and last_run.<part>.json per part of a split run).
RUN_ENTRIES = ("manifest.json", "last_run.json", "images", "scores", "report")


def prepare_output_folder(args: argparse.Namespace):
    """Own --out for this run (see caphuman.outputs): new, empty or an earlier eval run (which
    is resumed); a folder of other files is refused. A whole run or a --merge writes it alone;
    the parts of a split run (torchrun ranks, --part jobs) write disjoint images and share it."""
    from caphuman.outputs import claim_folder
    from caphuman.parallel import resolve_part

    return claim_folder(
        args.out,
        "eval",
        existing="",
        # An eval run from before owner markers: its manifest says so (eval writes only RUN_ENTRIES).
        adopt=lambda folder, entries: "manifest.json" in entries,
        shared=not resolve_part(args.part).whole,
    )


def run(args: argparse.Namespace) -> int:
    from caphuman.eval.benchmark import find_identities, load_benchmark
    from caphuman.eval.runner import MANIFEST, check_identity_photos, read_manifest

    # Settings and inputs are checked before the folder is claimed and before any model loads.
    spec = load_benchmark(args.benchmark)
    load_config(args.config)
    limit = args.max_identities if args.max_identities is not None else spec.max_identities
    identities = find_identities(args.identities, spec.default_subject, limit)
    resolve_methods(args.method)
    manifest_path = Path(args.out) / MANIFEST
    if manifest_path.is_file():
        check_identity_photos(read_manifest(manifest_path).get("identities", {}), identities, manifest_path)
    with prepare_output_folder(args):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from caphuman.build import resolve_device
    from caphuman.errors import CapHumanError
    from caphuman.eval.benchmark import find_identities, load_benchmark
    from caphuman.eval.clip_score import ClipScorer
    from caphuman.eval.identity_similarity import resolve_identity_model
    from caphuman.eval.methods import MethodContext
    from caphuman.eval.report import ReportNotes, write_report
    from caphuman.eval.runner import generate, missing_images, owned_units, update_manifest
    from caphuman.eval.scoring import Scorer, score_run
    from caphuman.outputs import write_json_atomically
    from caphuman.parallel import device_for_part, resolve_part, wait_for_all_ranks

    started = time.perf_counter()
    if args.batch_size < 1:
        raise CapHumanError(f"--batch-size must be at least 1, got {args.batch_size}.")
    part = resolve_part(args.part)
    if args.merge and not part.whole:
        raise CapHumanError("--merge puts the parts together: run it once, alone, after every --part job has finished.")
    spec = load_benchmark(args.benchmark)
    overrides = {
        "model": {"head_prior": args.head_prior} if args.head_prior else {},
        "sampling": {"num_inference_steps": args.steps} if args.steps else {},
    }
    config = load_config(args.config, overrides)
    limit = args.max_identities if args.max_identities is not None else spec.max_identities
    identities = find_identities(args.identities, spec.default_subject, limit)
    methods = resolve_methods(args.method)
    device = device_for_part(resolve_device(args.device), part)
    run_dir = Path(args.out)
    logger.info(
        "%s: %d identities x %d prompts x %d conditions x %d seeds = %d images per method; methods: %s",
        spec.name,
        len(identities),
        len(spec.prompts),
        len(spec.conditions),
        len(spec.seeds),
        len(identities) * spec.images_per_identity,
        ", ".join(m.name for m in methods),
    )
    if config.model.backbone == "sd15" and config.model.caphuman is not None and config.model.head_prior != "deca":
        logger.warning(
            "The released CapHuman weights were trained on DECA/FLAME renders; the '%s' head prior is outside their training distribution.",
            config.model.head_prior,
        )

    context = MethodContext(config, args.weights, device)
    summary: dict = {"benchmark": spec.name, "methods": [m.name for m in methods], "identities": [i.identity_id for i in identities]}
    if not part.whole:
        summary["part"] = str(part)
    # The process that writes the one report: the whole run, the merge, or torchrun's rank 0.
    reports = part.whole or (part.torchrun and part.index == 0)
    try:
        # Read every reference first, so a photo without a face fails before any generation.
        references = {identity.identity_id: context.identity(identity).image for identity in identities}
        update_manifest(run_dir, spec, args.benchmark, identities, context, methods, write=part.index == 0)
        if not (args.score_only or args.merge):
            summary["generation"] = [
                asdict(s) for s in generate(spec, identities, methods, run_dir, context, args.batch_size, part, progress=part.index == 0)
            ]
        if not args.generate_only:
            identity_model = resolve_identity_model(args.id_model, args.weights, device)
            clip_dir = Path(args.clip_model) if args.clip_model else Path(args.weights) / config.model.clip_vision
            clip = ClipScorer.from_dir(clip_dir, device)
            logger.info("Identity metric: %s. %s", identity_model.label, clip.note)
            scorer = Scorer(context, identity_model, clip, spec)
            if not part.whole:
                owned = owned_units(spec, identities, methods, args.batch_size, part)
                _, summary["scored_now"] = score_run(spec, identities, methods, run_dir, scorer, part, owned)
                wait_for_all_ranks(part)  # torchrun: the one wait, at the end, before rank 0 merges
            if reports:
                rows, scored_now = score_run(spec, identities, methods, run_dir, scorer)
                summary["scored_now"] = scored_now
                missing = missing_images(spec, identities, methods, run_dir)
                if missing:
                    logger.warning(
                        "%d image(s) of the benchmark are not in %s yet: run the unfinished part(s) again, then --merge.", missing, run_dir
                    )
                notes = ReportNotes(
                    benchmark=spec.name,
                    identities=len(identities),
                    identity_model=identity_model.label,
                    clip=clip.note,
                    head_prior=config.model.head_prior,
                    model_config=str(args.config),
                )
                files = write_report(run_dir, rows, [m.name for m in methods], spec, identities, references, notes)
                summary["report"] = {name: str(path) for name, path in files.items()}
            elif not part.torchrun:
                logger.info("%s done; when every part is, run the same command once with --merge for the report.", part)
    finally:
        context.close()
    summary["seconds"] = round(time.perf_counter() - started, 2)
    summary["command"] = getattr(args, "command_line", None) or shlex.join(sys.argv)
    write_json_atomically(run_dir / ("last_run.json" if reports else f"last_run.{part.tag}.json"), summary)
    logger.info("Done in %.1f s; see %s", summary["seconds"], run_dir / "report" / "table.md")
    return 0
