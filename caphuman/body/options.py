"""`caphuman sample`'s flags for the OpenPose ControlNet (only argparse here, so --help stays fast)."""

from __future__ import annotations

import argparse


def add_body_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("body control (the official second ControlNet: OpenPose, control_v11p_sd15_openpose; off by default)")
    group.add_argument(
        "--body-control-strength",
        type=float,
        metavar="S",
        help="scale of the OpenPose ControlNet (default from config: 0 = off; the original README's example uses 1.0)",
    )
    group.add_argument(
        "--body-modes", metavar="LIST", help="layers of the pose map: face (dots from the 3D head), body, hand (comma list; default face,body)"
    )
    group.add_argument("--body-map", metavar="PATH", help="a ready-made OpenPose image to use instead of drawing one from --pose-ref")
    group.add_argument("--body-controlnet", metavar="PATH", help="override model.body_controlnet (a .pth/.safetensors file or diffusers folder)")


def body_config_overrides(args: argparse.Namespace) -> tuple[dict, dict]:
    """(sampling, model) config overrides from the body-control flags that were given."""
    sampling = {}
    if getattr(args, "body_control_strength", None) is not None:
        sampling["body_control_strength"] = args.body_control_strength
    if getattr(args, "body_modes", None) is not None:
        sampling["body_modes"] = args.body_modes
    model = {"body_controlnet": args.body_controlnet} if getattr(args, "body_controlnet", None) else {}
    return sampling, model


__all__ = ["add_body_arguments", "body_config_overrides"]
