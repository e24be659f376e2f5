"""Generate photos of the person in --ref, with the head set by --pose-ref and/or --yaw/--pitch/--roll.

Writes image_000.png..., hint.png (a preview of the 9-channel head condition: normals, albedo,
shaded render) and config.yaml (every setting, so the run can be repeated) into --out; with
--body-control-strength > 0 also body_map.png, the OpenPose ControlNet's map. A folder holding
files of anything else is refused; one holding an earlier sample run is replaced only with
--overwrite, which removes exactly the files that run wrote.

Examples:
  caphuman sample --config configs/tiny.yaml --ref face.jpg --prompt "a photo of a person" --out outputs/tiny
  caphuman sample --config configs/caphuman_sd15.yaml --weights checkpoints --ref face.jpg \\
      --pose-ref pose.jpg --modes position,pose --prompt "a photo of a man, in the snow"
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from caphuman.checks import positive_float, positive_int, ranged_float, seed_flag
from caphuman.config import CLIP_CROPS, DTYPES, HEAD_PRIORS, PHOTO_FITS, CapHumanConfig, load_config, load_yaml_mapping, save_config
from caphuman.errors import CapHumanError, InputImageError
from caphuman.schedulers import SCHEDULERS

if TYPE_CHECKING:  # heavy imports wait until run(): `caphuman --help` answers at once
    from caphuman.outputs import OwnedFolder

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    inputs = parser.add_argument_group("inputs")
    inputs.add_argument(
        "--ref", action="append", required=True, metavar="PATH", help="reference face photo (repeat for several photos of one person)"
    )
    inputs.add_argument("--prompt", required=True, help="what to generate, e.g. 'a photo of a woman, on the beach'")
    inputs.add_argument("--a-prompt", default="", help="added prompt, appended as ', <text>' (the official --a_prompt), e.g. 'best quality'")
    inputs.add_argument("--negative-prompt", default=None, help="what to avoid (default from config: '')")
    inputs.add_argument("--pose-ref", metavar="PATH", help="photo whose head conditions (see --modes) are transferred")
    inputs.add_argument(
        "--modes", default="position,pose", help="conditions taken from --pose-ref: position, pose, expression, lighting, all (comma list)"
    )
    inputs.add_argument("--yaw", type=ranged_float(-180, 180), help="head yaw in degrees (positive: the nose turns to the image's right)")
    inputs.add_argument("--pitch", type=ranged_float(-180, 180), help="head pitch in degrees (positive tilts the nose down)")
    inputs.add_argument("--roll", type=ranged_float(-180, 180), help="head roll in degrees (positive: counter-clockwise)")
    face_index = positive_int(allow_zero=True)
    inputs.add_argument("--face-index", type=face_index, default=0, help="which face in --ref when a photo has several (0 = largest)")
    inputs.add_argument("--pose-face-index", type=face_index, default=0, help="which face in --pose-ref when it has several (0 = largest)")
    inputs.add_argument(
        "--person",
        nargs="+",
        action="append",
        metavar="REF [POSE [MODES]]",
        help="another person in the image: their reference photo, optionally a pose photo and the modes taken from it "
        "(default position,pose); repeat for more people. --ref/--pose-ref is person 1. Each person gets their own CapFace "
        "pass; without pose photos that give positions, people stand side by side. --yaw/--pitch/--roll apply to everyone.",
    )
    model = parser.add_argument_group("model")
    model.add_argument("--config", default="configs/caphuman_sd15.yaml", help="model + sampling config (YAML)")
    model.add_argument("--weights", default="checkpoints", help="folder with the weights files (see checkpoints/README.md)")
    model.add_argument("--head-prior", choices=sorted(HEAD_PRIORS), help="override model.head_prior")
    model.add_argument(
        "--sd-ckpt", metavar="PATH", help="another SD 1.5 checkpoint for this run (file or diffusers folder; overrides model.stable_diffusion)"
    )
    model.add_argument("--vae-ckpt", metavar="PATH", help="another VAE for this run (overrides model.vae)")
    model.add_argument("--clip-crop", choices=CLIP_CROPS, help="override identity.clip_crop (see README)")
    model.add_argument("--photo-fit", choices=PHOTO_FITS, help="override head.photo_fit: how a non-square photo becomes the square head frame")
    model.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    model.add_argument("--dtype", choices=DTYPES, help="override sampling.dtype")
    sampling = parser.add_argument_group("sampling (defaults from --config)")
    sampling.add_argument("--num-images", type=positive_int())
    sampling.add_argument("--height", type=positive_int(), help="image height in pixels (multiple of 8)")
    sampling.add_argument("--width", type=positive_int(), help="image width in pixels (multiple of 8)")
    sampling.add_argument("--eta", type=ranged_float(0.0, 1.0), help="DDIM eta (0 = deterministic, as published)")
    sampling.add_argument("--steps", type=positive_int(), help="denoising steps")
    sampling.add_argument("--guidance-scale", type=positive_float(allow_zero=True))
    sampling.add_argument("--identity-guidance-scale", type=positive_float(allow_zero=True))
    sampling.add_argument("--capface-strength", type=positive_float(allow_zero=True))
    sampling.add_argument("--tau", type=positive_int(allow_zero=True), help="identity tokens are zeroed above this timestep (0..1000)")
    sampling.add_argument("--scheduler", help=", ".join(SCHEDULERS))
    sampling.add_argument("--seed", type=seed_flag())
    sampling.add_argument("--no-mask-gating", action="store_true", help="do not gate CapFace by its predicted face mask")
    from caphuman.body.options import add_body_arguments

    add_body_arguments(parser)
    parser.add_argument("--out", default="outputs/sample", help="output folder (new, empty, or an earlier sample run with --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier sample run in --out (only the files it wrote are removed)")


def config_from_args(args: argparse.Namespace) -> CapHumanConfig:
    """The --config file with the command-line flags that were given on top."""
    sampling = {
        "num_images": args.num_images,
        "height": args.height,
        "width": args.width,
        "eta": args.eta,
        "num_inference_steps": args.steps,
        "guidance_scale": args.guidance_scale,
        "identity_guidance_scale": args.identity_guidance_scale,
        "capface_strength": args.capface_strength,
        "tau": args.tau,
        "scheduler": args.scheduler,
        "seed": args.seed,
        "dtype": args.dtype,
        "negative_prompt": args.negative_prompt,
        "mask_gating": False if args.no_mask_gating else None,
    }
    from caphuman.body.options import body_config_overrides

    body_sampling, body_model = body_config_overrides(args)
    model = {"head_prior": args.head_prior, **body_model}
    # Checkpoint flags are paths from the current folder (config paths are relative to --weights).
    for key, path in (("stable_diffusion", args.sd_ckpt), ("vae", args.vae_ckpt)):
        if path is not None:
            if not Path(path).exists():
                raise CapHumanError(f"--{'sd' if key == 'stable_diffusion' else 'vae'}-ckpt '{path}' does not exist.")
            model[key] = str(Path(path).resolve())
    overrides = {
        "sampling": {**{key: value for key, value in sampling.items() if value is not None}, **body_sampling},
        "model": {key: value for key, value in model.items() if value is not None},
        "identity": {"clip_crop": args.clip_crop} if args.clip_crop else {},
        "head": {"photo_fit": args.photo_fit} if args.photo_fit else {},
    }
    return load_config(args.config, overrides)


def parse_people(specs: list[list[str]] | None) -> list[tuple[str, str | None, tuple[str, ...]]]:
    """--person REF [POSE [MODES]] values -> (reference, pose or None, modes), checked."""
    from caphuman.errors import CapHumanError
    from caphuman.head.params import parse_modes

    people = []
    for spec in specs or []:
        if len(spec) > 3:
            raise CapHumanError(f"--person takes REF [POSE [MODES]], got {len(spec)} values: {' '.join(spec)}.")
        reference, pose = spec[0], spec[1] if len(spec) > 1 else None
        people.append((reference, pose, parse_modes(spec[2]) if len(spec) > 2 else ("position", "pose")))
    return people


# What a sample run writes; a folder holding only these (written before owner markers existed)
# counts as an earlier sample run.
SAMPLE_FILES = (r"image_\d{3,}\.png", r"hint\.png", r"hint_person\d+\.png", r"body_map\.png", r"config\.yaml")


def prepare_output_folder(args: argparse.Namespace) -> OwnedFolder:
    """Claim --out before anything slow: refuse a file, a folder of other files, a folder another
    process is writing, or an earlier sample run without --overwrite."""
    from caphuman.outputs import claim_folder, names_match

    return claim_folder(
        args.out,
        "sample",
        existing="pass --overwrite to replace its images",
        allow_existing=args.overwrite,
        adopt=lambda folder, entries: names_match(entries, SAMPLE_FILES) and _is_sample_config(folder / "config.yaml"),
    )


def _is_sample_config(path: Path) -> bool:
    """config.yaml as `caphuman sample` writes it (so a lone image_000.png of the user's is not
    taken for ours, and never removed by --overwrite)."""
    from caphuman.errors import ConfigError

    if not path.is_file():
        return False
    try:
        settings = load_yaml_mapping(path)
    except ConfigError:
        return False
    return "sampling" in settings and "prompt" in (settings.get("run") or {})


def check_input_files(args: argparse.Namespace) -> None:
    """A missing photo is reported in a second, before the models load."""
    # (--person photos are read in _run, after their REF [POSE [MODES]] shape is checked.)
    for path in [*args.ref, *([args.pose_ref] if args.pose_ref else [])]:
        if not Path(path).is_file():
            raise InputImageError(f"Input image '{path}' does not exist." if not Path(path).exists() else f"Input image '{path}' is not a file.")


def write_outputs(
    owned: OwnedFolder, images: list, hint_image, config: CapHumanConfig, run_facts: dict, extra_images: dict | None = None
) -> list[str]:
    """Write images, hint.png, ``extra_images`` ({file name: PIL image}, e.g. body_map.png) and
    config.yaml into the claimed folder, after removing (with --overwrite) exactly the files the
    earlier run there recorded; record the new ones."""
    from caphuman.outputs import remove_recorded_files, save_image_atomically

    removed = remove_recorded_files(owned)
    if removed:
        logger.info("Removed %d file(s) of the earlier run in %s (--overwrite).", len(removed), owned.path)
    pictures = {f"image_{index:03d}.png": image for index, image in enumerate(images)}
    pictures["hint.png"] = hint_image
    pictures.update(extra_images or {})
    names = [*pictures, "config.yaml"]
    # Recorded first: a crash part-way still leaves a marker that lists every file we may have written.
    owned.add_files(names)
    for name, image in pictures.items():
        save_image_atomically(image, owned.path / name)
    save_config(config, owned.path / "config.yaml", extra=run_facts)
    return names


def input_facts(args: argparse.Namespace) -> dict:
    """The run facts sample and sweep share in config.yaml: the command line, the prompts and the photos."""
    return {
        # Set by caphuman.cli: quoted, so it can be pasted back into a shell.
        "command": getattr(args, "command_line", None) or shlex.join(sys.argv),
        "prompt": args.prompt,
        "a_prompt": args.a_prompt,
        "references": [str(Path(path).resolve()) for path in args.ref],
        "pose_reference": str(Path(args.pose_ref).resolve()) if args.pose_ref else None,
    }


def run(args: argparse.Namespace) -> int:
    # Typos, bad settings and an unusable --out fail here, in well under a second.
    check_input_files(args)
    config = config_from_args(args)
    with prepare_output_folder(args) as owned:
        return _run(args, owned, config)


def _run(args: argparse.Namespace, owned: OwnedFolder, config: CapHumanConfig) -> int:
    from PIL import Image

    from caphuman.body.condition import BODY_MAP_FILE, body_map_for_run, check_body_inputs
    from caphuman.conditions.text import join_prompt, warn_if_truncated
    from caphuman.faces.detection import select_face
    from caphuman.head.hint import hint_preview
    from caphuman.head.params import parse_modes, set_pose, transfer, untested_pose
    from caphuman.session import CapHumanSession

    modes = parse_modes(args.modes) if args.pose_ref else ()
    # Read every input before loading any model, so a typo fails in a second.
    others = parse_people(args.person)
    for path in args.ref + ([args.pose_ref] if args.pose_ref else []) + [path for ref, pose, _ in others for path in (ref, pose) if path]:
        CapHumanSession.load_photo(path)
    ready_body_map = check_body_inputs(args, config)
    if config.model.backbone == "sd15" and config.model.caphuman is not None and config.model.head_prior != "deca":
        logger.warning(
            "The released CapHuman weights were trained on DECA/FLAME renders; hints from the '%s' head prior are outside "
            "their training distribution, so head control will be weaker. Use --head-prior deca for the published behaviour.",
            config.model.head_prior,
        )

    with CapHumanSession(config, args.weights, args.device) as session:
        device = session.device
        references = [face for path in args.ref for face in session.reference_faces(path, args.face_index)]
        params = session.head(args.ref[0], face_index=args.face_index)
        if args.pose_ref:
            # Picked (and announced) here, in the frame the head prior sees, so an error names
            # the pose photo and its own flag.
            select_face(session.detector.detect(session.head_input(args.pose_ref)), args.pose_face_index, args.pose_ref, flag="--pose-face-index")
            params = transfer(params, session.head(args.pose_ref, face_index=args.pose_face_index), modes)
        if any(angle is not None for angle in (args.yaw, args.pitch, args.roll)):
            params = set_pose(params, args.yaw, args.pitch, args.roll)
        warning = untested_pose(params, config.model.head_prior)
        if warning:
            logger.warning("%s", warning)
        other_params = []
        for ref, pose, person_modes in others:
            head = session.head(ref, face_index=args.face_index)
            if pose:
                head = transfer(head, session.head(pose, face_index=args.face_index), person_modes)
            if any(angle is not None for angle in (args.yaw, args.pitch, args.roll)):
                head = set_pose(head, args.yaw, args.pitch, args.roll)
            other_params.append(head)
        placed_by_photos = "position" in modes and all(pose and "position" in m for _, pose, m in others)
        if others and not placed_by_photos:
            from caphuman.conditions.people import arrange_in_row

            params, *other_params = arrange_in_row([params, *other_params])
        head_hint = session.hint(params)
        other_hints = [session.hint(head) for head in other_params]
        # The official map comes from the pose photo; without one, the reference is the pose. Drawn
        # in the head prior's frame (the photo squashed or padded to a square), as the hint is.
        pose_photo = session.head_input(args.pose_ref if args.pose_ref else args.ref[0])
        body_map = body_map_for_run(config, ready_body_map, pose_photo, session.head_prior, params)
        warn_if_truncated([join_prompt(args.prompt, args.a_prompt)], session.pipeline.tokenizer)
        if others:  # one CapFace pass per person (caphuman.conditions.people)
            from caphuman.conditions.people import PersonCondition

            people = [PersonCondition(hint=head_hint, references=references)] + [
                PersonCondition(hint=hint, references=session.reference_faces(ref, args.face_index))
                for hint, (ref, _, _) in zip(other_hints, others, strict=True)
            ]
            output = session.generate(args.prompt, None, None, a_prompt=args.a_prompt, body_map=body_map, people=people)
        else:
            output = session.generate(args.prompt, references, head_hint, a_prompt=args.a_prompt, body_map=body_map)

    run_facts = {
        "run": {
            **input_facts(args),
            "body_map": str(Path(args.body_map).resolve()) if args.body_map else None,
            "modes": list(modes),
            "yaw": args.yaw,
            "pitch": args.pitch,
            "roll": args.roll,
            "face_index": args.face_index,
            "pose_face_index": args.pose_face_index,
            "weights": str(Path(args.weights).resolve()),
            "device": str(device),
            "head_rotation_degrees": [round(float(v), 3) for v in params.rotation[0].tolist()],
            "other_people": [
                {"reference": str(Path(ref).resolve()), "pose_reference": str(Path(pose).resolve()) if pose else None, "modes": list(m)}
                for ref, pose, m in others
            ],
        }
    }
    extra_images = {f"hint_person{number}.png": hint_preview(hint) for number, hint in enumerate(other_hints, start=2)}
    if body_map is not None:
        extra_images[BODY_MAP_FILE] = Image.fromarray(body_map)
    write_outputs(owned, output.images, hint_preview(head_hint), config, run_facts, extra_images)
    logger.info("Wrote %d image(s), hint.png and config.yaml to %s", len(output.images), owned.path)
    return 0
