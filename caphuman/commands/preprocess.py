"""Turn a folder of photos into a sharded training dataset (aligned images, masks, embeddings, hints).

Per photo: the largest face, aligned at --image-size (the training target), its face mask, the
global identity embedding and the 224 px CLIP reference crop (from the recogniser in --config),
the head-prior parameters and rendered 9-channel hint, and the caption from --captions.
Reruns resume: photos already in the dataset are not processed again. Unreadable files and
photos without a face are skipped and listed in DATASET/report.json. See docs/DATASET.md.

Examples:
  caphuman preprocess --images photos/ --out data/faces --config configs/tiny.yaml --image-size 128
  caphuman preprocess --images celeba/ --out data/celeba --captions captions.jsonl \\
      --config configs/caphuman_sd15.yaml --weights checkpoints --workers 8

Many machines: under torchrun each rank takes its share of the photos (by a hash of the path) into
DATASET/parts/, and rank 0 merges the parts into one index at the end. As separate jobs, give each
--part i/N, then run once with --merge.
  torchrun --nnodes 4 --nproc-per-node 8 ... -m caphuman.cli preprocess --images celeba/ --out data/celeba --device cuda
  caphuman preprocess --images celeba/ --out data/celeba --part $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT
  caphuman preprocess --images celeba/ --out data/celeba --merge
"""

from __future__ import annotations

import argparse
import logging

from caphuman.checks import positive_int
from caphuman.config import HEAD_PRIORS
from caphuman.errors import InputImageError

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", required=True, metavar="DIR", help="folder of photos (searched recursively)")
    parser.add_argument("--out", required=True, metavar="DATASET", help="dataset folder to create or resume (a folder of other files is refused)")
    parser.add_argument(
        "--captions", metavar="FILE", help='jsonl ({"file": ..., "caption": ...}) or csv (file,caption); file is relative to --images or a file name'
    )
    parser.add_argument("--config", default="configs/caphuman_sd15.yaml", help="model config: which face recogniser and head prior")
    parser.add_argument("--weights", default="checkpoints", help="folder with the weights files (recogniser, DECA, BiSeNet)")
    parser.add_argument("--image-size", type=positive_int(), default=512, help="stored side of the aligned image, mask and hint (default 512)")
    parser.add_argument("--workers", type=positive_int(), default=1, help="parallel processes, each with its own models (default 1)")
    parser.add_argument("--shard-size", type=positive_int(), default=1000, help="records per shard (default 1000)")
    parser.add_argument("--head-prior", choices=sorted(HEAD_PRIORS), help="override model.head_prior of --config")
    parser.add_argument("--device", default="cpu", help="torch device for the models: cpu, cuda, cuda:N or auto")
    parser.add_argument("--retry-failed", action="store_true", help="process again photos skipped earlier as unreadable or without a face")
    parser.add_argument("--default-caption", default="a photo of a person", help="caption of photos that --captions does not cover")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--part", metavar="I/N", help="process only part I of N (0-based) of the photos, for job arrays; then run --merge")
    parser.add_argument("--merge", action="store_true", help="only merge the parts under DATASET/parts into the one index (after every --part job)")


def run(args: argparse.Namespace) -> int:
    from caphuman.data.preprocess import PreprocessSettings, merge_parts, preprocess_folder
    from caphuman.data.shards import REPORT_FILE
    from caphuman.errors import CapHumanError
    from caphuman.parallel import resolve_part, wait_for_all_ranks

    part = resolve_part(args.part)
    if args.merge:
        if not part.whole:
            raise CapHumanError("--merge puts the parts together: run it once, alone, after every --part job has finished.")
        merge_parts(args.out)
        return 0
    device = args.device
    if part.torchrun:
        from caphuman.build import resolve_device
        from caphuman.parallel import device_for_part

        device = str(device_for_part(resolve_device(args.device), part))  # one GPU per rank
    settings = PreprocessSettings(
        images=args.images,
        out=args.out,
        captions=args.captions,
        config=args.config,
        weights=args.weights,
        image_size=args.image_size,
        workers=args.workers,
        shard_size=args.shard_size,
        head_prior=args.head_prior,
        device=device,
        retry_failed=args.retry_failed,
        default_caption=args.default_caption,
    )
    summary = preprocess_folder(settings, progress=not args.no_progress and part.index == 0, part=part)
    if part.torchrun:
        wait_for_all_ranks(part)  # the one wait, at the end
        if part.index == 0:
            merge_parts(args.out)
        return 0
    if not part.whole:
        logger.info("%s done; when every part is, run the same command once with --merge.", part)
        return 0
    if summary.records_in_dataset == 0:
        raise InputImageError(
            f"No photo under '{args.images}' could be processed "
            f"({len(summary.skipped) + summary.previously_skipped} skipped; reasons in {args.out}/{REPORT_FILE})."
        )
    return 0
