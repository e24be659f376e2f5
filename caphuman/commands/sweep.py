"""Turn the head: images of the --ref person at a range of yaw angles, one seed, plus a contact sheet and an animation.

Every frame shares the prompt, settings and initial noise; only the head's yaw changes. Writes
frame_NNN.png, hint_NNN.png (the hints: normals | albedo | shaded), sheet.png (images above
their hints), sweep.gif, sweep.mp4 (when imageio-ffmpeg is installed) and config.yaml to --out.

Examples:
  caphuman sweep --config configs/tiny.yaml --ref face.jpg --prompt "a photo of a person" --out outputs/sweep
  caphuman sweep --config configs/caphuman_sd15.yaml --weights checkpoints --ref face.jpg \\
      --prompt "a photo of a woman, in a garden" --yaw-from -40 --yaw-to 40 --frames 9 --seed 7
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from caphuman.checks import positive_float, positive_int, ranged_float, ranged_int, seed_flag
from caphuman.config import load_config, save_config
from caphuman.errors import CapHumanError
from caphuman.sweep import MAX_ABS_YAW, MAX_FRAMES

if TYPE_CHECKING:
    from caphuman.outputs import OwnedFolder

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    inputs = parser.add_argument_group("inputs")
    inputs.add_argument(
        "--ref", action="append", required=True, metavar="PATH", help="reference face photo (repeat for several photos of one person)"
    )
    inputs.add_argument("--prompt", required=True, help="what to generate")
    inputs.add_argument("--a-prompt", default="", help="added prompt, appended as ', <text>'")
    inputs.add_argument("--negative-prompt", default=None, help="what to avoid (default from config)")
    inputs.add_argument(
        "--pose-ref", metavar="PATH", help="photo whose head conditions (see --modes) are used for every frame; the yaw is then replaced"
    )
    inputs.add_argument("--modes", default="position,pose", help="conditions taken from --pose-ref (comma list)")
    inputs.add_argument("--pitch", type=ranged_float(-180, 180), help="head pitch in degrees for every frame")
    inputs.add_argument("--roll", type=ranged_float(-180, 180), help="head roll in degrees for every frame")
    face_index = positive_int(allow_zero=True)
    inputs.add_argument("--face-index", type=face_index, default=0, help="which face in --ref when a photo has several (0 = largest)")
    inputs.add_argument("--pose-face-index", type=face_index, default=0, help="which face in --pose-ref when it has several (0 = largest)")
    sweep = parser.add_argument_group("sweep")
    sweep.add_argument("--yaw-from", type=ranged_float(-MAX_ABS_YAW, MAX_ABS_YAW), default=-45.0, help="first yaw in degrees (default -45)")
    sweep.add_argument("--yaw-to", type=ranged_float(-MAX_ABS_YAW, MAX_ABS_YAW), default=45.0, help="last yaw in degrees (default 45)")
    sweep.add_argument("--frames", type=ranged_int(1, MAX_FRAMES), default=7, help="number of frames, evenly spaced, ends included (default 7)")
    sweep.add_argument("--fps", type=ranged_float(0.1, 60), default=6.0, help="animation frames per second (default 6)")
    model = parser.add_argument_group("model")
    model.add_argument("--config", default="configs/caphuman_sd15.yaml", help="model + sampling config (YAML)")
    model.add_argument("--weights", default="checkpoints", help="folder with the weights files")
    model.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    sampling = parser.add_argument_group("sampling (defaults from --config)")
    sampling.add_argument("--seed", type=seed_flag(), help="one seed for every frame")
    sampling.add_argument("--steps", type=positive_int(), help="denoising steps")
    sampling.add_argument("--guidance-scale", type=positive_float(allow_zero=True))
    sampling.add_argument("--capface-strength", type=positive_float(allow_zero=True))
    parser.add_argument("--out", default="outputs/sweep", help="output folder (new, empty, or an earlier sweep with --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier sweep in --out (only the files it wrote are removed)")


def run(args: argparse.Namespace) -> int:
    from caphuman.head.params import parse_modes
    from caphuman.outputs import claim_folder
    from caphuman.session import CapHumanSession
    from caphuman.sweep import yaw_angles

    # Check every number and file before loading any model.
    yaws = yaw_angles(args.yaw_from, args.yaw_to, args.frames)
    if not 0 < args.fps <= 60:
        raise CapHumanError(f"--fps must be in (0, 60], got {args.fps:g}.")
    sampling = {
        "seed": args.seed,
        "num_inference_steps": args.steps,
        "guidance_scale": args.guidance_scale,
        "capface_strength": args.capface_strength,
        "negative_prompt": args.negative_prompt,
    }
    config = load_config(args.config, {"sampling": {key: value for key, value in sampling.items() if value is not None}})
    modes = parse_modes(args.modes) if args.pose_ref else ()
    for path in args.ref + ([args.pose_ref] if args.pose_ref else []):
        CapHumanSession.load_photo(path)

    # Claimed before any model loads; a folder of other files, another sweep without
    # --overwrite, or a folder another process writes is refused in one sentence.
    with claim_folder(args.out, "sweep", existing="pass --overwrite to replace its frames", allow_existing=args.overwrite) as owned:
        return _run(args, owned, config, modes, yaws)


def _run(args: argparse.Namespace, owned: OwnedFolder, config, modes: tuple, yaws: list[float]) -> int:
    from caphuman.commands.sample import input_facts
    from caphuman.head.params import set_pose, transfer
    from caphuman.outputs import remove_recorded_files
    from caphuman.session import CapHumanSession
    from caphuman.sweep import render_sweep, sweep_file_names, write_sweep

    with CapHumanSession(config, args.weights, args.device) as session:
        references = [face for path in args.ref for face in session.reference_faces(path, args.face_index)]
        params = session.head(args.ref[0], face_index=args.face_index)
        if args.pose_ref:
            params = transfer(params, session.head(args.pose_ref, face_index=args.pose_face_index), modes)
        params = set_pose(params, None, args.pitch, args.roll)
        frames = render_sweep(
            session,
            args.prompt,
            references,
            params,
            yaws,
            a_prompt=args.a_prompt,
            on_frame=lambda done, total: logger.info("frame %d/%d", done, total),
        )
    removed = remove_recorded_files(owned)
    if removed:
        logger.info("Removed %d file(s) of the earlier sweep in %s (--overwrite).", len(removed), owned.path)
    # Recorded first: a crash part-way still leaves a marker listing every file we may have written.
    owned.add_files([*sweep_file_names(len(frames)), "config.yaml"])
    written = write_sweep(frames, owned.path, fps=args.fps)
    run_facts = {
        "run": {
            **input_facts(args),
            "modes": list(modes),
            "yaws": [round(yaw, 3) for yaw in yaws],
            "pitch": args.pitch,
            "roll": args.roll,
            "weights": str(Path(args.weights).resolve()),
        }
    }
    save_config(config, owned.path / "config.yaml", extra=run_facts)
    logger.info("Wrote %d frames, %s to %s", len(frames), ", ".join(path.name for path in written.values()), args.out)
    return 0
