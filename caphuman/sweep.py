"""'Turn the head': one identity, one seed, the head rendered at a range of yaw angles.

Every frame uses the same reference, prompt, settings and initial noise; only the hint changes
(the reconstructed head re-rendered with its yaw replaced), so the frames show what the head
condition alone does. Outputs: the frames, a contact sheet (images above their hints' shaded
renders) and an animation (GIF always; MP4 when imageio-ffmpeg is installed).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from caphuman.errors import CapHumanError
from caphuman.outputs import atomic_path, save_image_atomically

if TYPE_CHECKING:  # torch and the head prior load only when frames are rendered, so `caphuman sweep --help` stays fast
    import torch

    from caphuman.head.params import HeadParams

logger = logging.getLogger(__name__)

MAX_FRAMES = 61
MAX_ABS_YAW = 90.0


@dataclass
class SweepFrame:
    """One frame: the yaw it was rendered at, the generated image and the (1, 9, H, W) hint."""

    yaw: float
    image: Image.Image
    hint: torch.Tensor


def yaw_angles(start: float, stop: float, frames: int) -> list[float]:
    """``frames`` evenly spaced yaws from ``start`` to ``stop`` (degrees, both included)."""
    if not 1 <= frames <= MAX_FRAMES:
        raise CapHumanError(f"The number of frames must be between 1 and {MAX_FRAMES}, got {frames}.")
    for value in (start, stop):
        if not -MAX_ABS_YAW <= value <= MAX_ABS_YAW:
            raise CapHumanError(f"Yaw angles must be within +-{MAX_ABS_YAW:g} degrees, got {value:g}.")
    return [float(value) for value in np.linspace(start, stop, frames)]


def render_sweep(
    session,
    prompt: str,
    references: list,
    params: HeadParams,
    yaws: list[float],
    height: int | None = None,
    width: int | None = None,
    on_frame: Callable[[int, int], None] | None = None,
    **generate_kwargs: Any,
) -> list[SweepFrame]:
    """Generate one image per yaw with ``session`` (a CapHumanSession); the seed in
    ``generate_kwargs`` (or the config's) is re-applied for every frame, so the noise is shared."""
    from caphuman.head.params import set_pose  # deferred: torch; `caphuman --help` reads MAX_FRAMES and MAX_ABS_YAW here

    frames = []
    generate_kwargs = {**generate_kwargs, "num_images": 1}
    for index, yaw in enumerate(yaws):
        hint = session.hint(set_pose(params, yaw=yaw), height, width)
        image = session.generate(prompt, references, hint, **generate_kwargs).images[0]
        frames.append(SweepFrame(yaw=yaw, image=image, hint=hint))
        if on_frame is not None:
            on_frame(index + 1, len(yaws))
    return frames


def contact_sheet(frames: list[SweepFrame]) -> Image.Image:
    """Frames left to right: each generated image above the shaded render of its hint."""
    from caphuman.conditions.hint_layout import SHADED_CHANNELS  # deferred: torch; `caphuman --help` reads MAX_FRAMES and MAX_ABS_YAW here

    width, height = frames[0].image.size
    sheet = Image.new("RGB", (width * len(frames), height * 2), "black")
    for index, frame in enumerate(frames):
        shaded = frame.hint[0, SHADED_CHANNELS].detach().float().cpu().clamp(0, 1)
        shaded_image = Image.fromarray((shaded.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
        sheet.paste(frame.image.convert("RGB"), (index * width, 0))
        sheet.paste(shaded_image.resize((width, height)), (index * width, height))
    return sheet


def write_gif(images: list[Image.Image], path: Path, fps: float = 6.0, bounce: bool = True) -> None:
    """Looping GIF; ``bounce`` plays the frames forwards then backwards (a head turning to and fro)."""
    sequence = [image.convert("RGB") for image in images]
    if bounce and len(sequence) > 2:
        sequence = sequence + sequence[-2:0:-1]
    with atomic_path(path, suffix=".gif") as tmp:
        sequence[0].save(tmp, format="GIF", save_all=True, append_images=sequence[1:], duration=int(round(1000 / fps)), loop=0)


def mp4_available() -> bool:
    try:
        import imageio_ffmpeg  # noqa: F401  (ships its own ffmpeg binary)
    except ImportError:
        return False
    return True


def write_mp4(images: list[Image.Image], path: Path, fps: float = 6.0, bounce: bool = True) -> bool:
    """H.264 MP4 through imageio-ffmpeg's bundled ffmpeg; False (and nothing written) without it.
    Frames are padded to even sizes, which yuv420p needs."""
    if not mp4_available():
        logger.info("imageio-ffmpeg is not installed; skipping the MP4 (the GIF has the same frames).")
        return False
    import imageio_ffmpeg

    sequence = [np.asarray(image.convert("RGB")) for image in images]
    if bounce and len(sequence) > 2:
        sequence = sequence + sequence[-2:0:-1]
    height, width = sequence[0].shape[:2]
    pad = ((0, height % 2), (0, width % 2), (0, 0))
    with atomic_path(path, suffix=".mp4") as tmp:
        writer = imageio_ffmpeg.write_frames(
            str(tmp),
            (width + width % 2, height + height % 2),
            fps=fps,
            codec="libx264",
            pix_fmt_out="yuv420p",
            macro_block_size=1,
            ffmpeg_log_level="error",
        )
        writer.send(None)
        for frame in sequence:
            writer.send(np.ascontiguousarray(np.pad(frame, pad, mode="edge")))
        writer.close()
    return True


def sweep_file_names(frame_count: int) -> list[str]:
    """Every file :func:`write_sweep` may write for ``frame_count`` frames (recorded before
    writing, so ``caphuman sweep --overwrite`` later removes exactly these)."""
    frames = [f"{kind}_{index:03d}.png" for index in range(frame_count) for kind in ("frame", "hint")]
    return [*frames, "sheet.png", "sweep.gif", "sweep.mp4"]


def write_sweep(frames: list[SweepFrame], out: Path, fps: float = 6.0) -> dict[str, Path]:
    """frame_NNN.png, hint_NNN.png (hint previews), sheet.png, sweep.gif and sweep.mp4 (if possible)."""
    from caphuman.head.hint import hint_preview  # deferred: torch; `caphuman --help` reads MAX_FRAMES and MAX_ABS_YAW here

    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for index, frame in enumerate(frames):
        save_image_atomically(frame.image, out / f"frame_{index:03d}.png")
        save_image_atomically(hint_preview(frame.hint), out / f"hint_{index:03d}.png")
    written["sheet"] = out / "sheet.png"
    save_image_atomically(contact_sheet(frames), written["sheet"])
    written["gif"] = out / "sweep.gif"
    write_gif([frame.image for frame in frames], written["gif"], fps)
    if write_mp4([frame.image for frame in frames], out / "sweep.mp4", fps):
        written["mp4"] = out / "sweep.mp4"
    return written
