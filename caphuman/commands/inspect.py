"""Write exactly what the model sees for a photo, to see why an identity or a pose came out wrong.

Into --out, a new or empty folder or an earlier inspect's (only these files; an earlier inspect's
files of these names are replaced; a folder holding other files is refused):
  facenet_input.png     FaceNet's 160 x 160 input before prewhitening (recogniser_input.png for
                        ArcFace/dlib): for the published config, facenet-pytorch MTCNN's crop
  clip_input.png        CLIP's 224 x 224 input, non-face pixels white
  parsing_mask.png      the face region CLIP keeps (white), at the photo's size
  head_input.png        the square photo the head prior reconstructs from (head.photo_fit)
  head_params.json      the head parameters (after --pose-ref/--modes and --yaw/--pitch/--roll)
  hint_normals.png, hint_albedo.png, hint_shaded.png
                        the hint's three channel groups at the sampling size
  inspect.json          what made each file, and which were skipped
Outputs whose weights file is missing are skipped, one line each naming the file; the rest are
still written (the MTCNN crop needs no file).

Examples:
  caphuman inspect --config configs/tiny.yaml --ref face.jpg --out outputs/inspect
  caphuman inspect --config configs/caphuman_sd15.yaml --weights checkpoints --ref face.jpg \\
      --pose-ref pose.jpg --modes position,pose --out outputs/inspect
"""

from __future__ import annotations

import argparse
import io
import json
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from caphuman.errors import MissingWeightsError
from caphuman.outputs import write_bytes_atomically

logger = logging.getLogger(__name__)

HINT_GROUP_FILES = ("hint_normals.png", "hint_albedo.png", "hint_shaded.png")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ref", required=True, metavar="PATH", help="reference face photo")
    parser.add_argument("--pose-ref", metavar="PATH", help="photo whose head conditions (see --modes) are transferred")
    parser.add_argument("--modes", default="position,pose", help="conditions taken from --pose-ref: position, pose, expression, lighting, all")
    parser.add_argument("--yaw", type=float, help="head yaw in degrees")
    parser.add_argument("--pitch", type=float, help="head pitch in degrees")
    parser.add_argument("--roll", type=float, help="head roll in degrees")
    parser.add_argument("--face-index", type=int, default=0, help="which face when a photo has several (0 = largest)")
    parser.add_argument("--config", default="configs/caphuman_sd15.yaml", help="model config (YAML)")
    parser.add_argument("--weights", default="checkpoints", help="folder with the weights files")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--out", required=True, help="output folder")


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def hint_group_images(hint) -> list[np.ndarray]:
    """(1, 9, H, W) hint -> three (H, W, 3) uint8 images: normals mapped from [-1, 1], albedo and
    shaded render from [0, 1]."""
    from caphuman.conditions.hint_layout import ALBEDO_CHANNELS, NORMAL_CHANNELS, SHADED_CHANNELS

    item = hint[0].detach().float().cpu()
    groups = [(item[NORMAL_CHANNELS] + 1.0) / 2.0, item[ALBEDO_CHANNELS], item[SHADED_CHANNELS]]
    return [(group.clamp(0, 1).permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8) for group in groups]


def head_params_json(params) -> dict:
    import dataclasses

    values = {f.name: getattr(params, f.name) for f in dataclasses.fields(params)}
    return {name: (value if isinstance(value, str) else np.round(value.detach().float().cpu().numpy(), 6).tolist()) for name, value in values.items()}


# What inspect writes (a folder holding only these counts as an earlier inspect's).
INSPECT_FILES = (r"[a-z_]+_input\.png", r"parsing_mask\.png", r"head_params\.json", r"hint_[a-z]+\.png", r"inspect\.json")


def run(args: argparse.Namespace) -> int:
    from caphuman.outputs import claim_folder, names_match

    # Its own folder only (see caphuman.outputs): an earlier inspect's is reused, anything else refused.
    with claim_folder(args.out, "inspect", existing="", adopt=lambda folder, entries: names_match(entries, INSPECT_FILES)):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from caphuman.config import load_config
    from caphuman.faces.images import load_image
    from caphuman.head.params import parse_modes, set_pose, transfer
    from caphuman.session import CapHumanSession

    config = load_config(args.config)
    modes = parse_modes(args.modes) if args.pose_ref else ()
    # Read the photos before any model loads, so a typo fails at once.
    photo = load_image(args.ref)
    driver = load_image(args.pose_ref) if args.pose_ref else None
    out = Path(args.out)
    written: dict[str, str] = {}
    skipped: dict[str, str] = {}

    def write(name: str, data: bytes, made_by: str) -> None:
        write_bytes_atomically(out / name, data)
        written[name] = made_by

    def skip(names: list[str], error: MissingWeightsError) -> None:
        reason = f"missing {error.path}"
        for name in names:
            skipped[name] = reason
        logger.warning("Skipped %s: %s", ", ".join(names), error)

    with CapHumanSession(config, args.weights, args.device) as session:
        face = session.detect(photo, args.face_index, args.ref)
        crop_name = "facenet_input.png" if config.model.face_recognizer in ("facenet", "tiny") else "recognizer_input.png"
        try:
            crop, crop_source = session.recognizer_crop(photo, face, args.face_index)
            write(crop_name, png_bytes(crop), f"{config.model.face_recognizer} crop: {crop_source}")
        except MissingWeightsError as error:
            skip([crop_name], error)

        try:
            region = session.face_region(photo, face, native_size=config.identity.clip_crop == "official")
            write("parsing_mask.png", png_bytes(region.astype(np.uint8) * 255), f"face parser: {session.face_parser_name}")
            write("clip_input.png", png_bytes(session.clip_input(photo, face, region)), f"clip_crop: {config.identity.clip_crop}")
        except MissingWeightsError as error:
            skip(["parsing_mask.png", "clip_input.png"], error)

        write("head_input.png", png_bytes(session.head_input(photo)), f"photo_fit: {config.head.photo_fit}")
        try:
            params = session.head(photo, face_index=args.face_index)
            if driver is not None:
                # Detect here, naming the file: the head prior only sees an array (a pose photo
                # without a face must say which file it is).
                session.detect(driver, args.face_index, args.pose_ref)
                params = transfer(params, session.head(driver, face_index=args.face_index), modes)
            if any(angle is not None for angle in (args.yaw, args.pitch, args.roll)):
                params = set_pose(params, args.yaw, args.pitch, args.roll)
            facts = {"modes": list(modes), "pose_reference": args.pose_ref, **head_params_json(params)}
            write("head_params.json", (json.dumps(facts, indent=2) + "\n").encode("utf-8"), f"head prior: {config.model.head_prior}")
            hint = session.hint(params)
            for name, image in zip(HINT_GROUP_FILES, hint_group_images(hint), strict=True):
                write(name, png_bytes(image), f"{config.sampling.height}x{config.sampling.width} render")
        except MissingWeightsError as error:
            skip(["head_params.json", *HINT_GROUP_FILES], error)

    summary = {"reference": str(Path(args.ref).resolve()), "config": str(args.config), "written": written, "skipped": skipped}
    write("inspect.json", (json.dumps(summary, indent=2) + "\n").encode("utf-8"), "this summary")
    logger.info("Wrote %d file(s) to %s%s", len(written), out, f"; skipped {len(skipped)} (missing weights)" if skipped else "")
    return 0
