"""The gradio page: the official demos' controls (one or two people) plus direct 3D head control.

Layout: photos and head control on the left (person 1 and an optional person 2, each with a
reference, more photos of the same person, a pose photo and its modes; yaw/pitch/roll sliders and
a photo for expression/lighting; a live hint preview), the prompt, the buttons and the official
advanced settings; results on the right (images, downloads with settings, the 'turn the head'
strip and animation). Work is done by :class:`caphuman.demo.callbacks.DemoBackend`; this module
only maps widgets to its arguments and its errors to messages in the page.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

# gradio must never phone home: no analytics, no version check (set before gradio is imported).
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gradio as gr  # noqa: E402
import torch  # noqa: E402

from caphuman.config import BODY_MODES, DEFAULT_BODY_MODES  # noqa: E402
from caphuman.demo.callbacks import (  # noqa: E402
    DemoBackend,
    GenerationSettings,
    HeadControls,
    PersonInput,
)
from caphuman.errors import CapHumanError  # noqa: E402

logger = logging.getLogger(__name__)

MODES = ["position", "pose", "expression", "lighting"]
LOOK_MODES = ["expression", "lighting"]
# System fonts only: the default theme would ask Google Fonts, and the demo must work offline.
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
GPU = "gpu"  # one concurrency group for everything that runs the diffusion model


def _uploaded_path(payload):
    return None if payload is None else payload.path


def photo_upload(**kwargs) -> gr.Image:
    """An image upload handed to the callbacks untouched, as a path: gradio would otherwise decode
    it first, failing on an unreadable file with a bare 'Error' and dropping the EXIF rotation
    that our loader applies. (A gr.Image subclass would do the same, but gradio writes a .pyi
    stub beside the module of every component class, i.e. into the installed package.)"""
    image = gr.Image(type="filepath", **kwargs)
    image.preprocess = _uploaded_path
    return image


def page_error(error: Exception) -> gr.Error:
    """The one sentence a user sees in the page; the server keeps serving."""
    if isinstance(error, CapHumanError):
        # Uploads live in gradio's cache folder: name the file, not the server's path.
        return gr.Error(re.sub(r"'(?:[^'\s]*/)+([^/']+)'", r"'\1'", str(error)), print_exception=False)
    if isinstance(error, torch.cuda.OutOfMemoryError):
        torch.cuda.empty_cache()
        return gr.Error("The GPU ran out of memory: try fewer images or a lower resolution.", print_exception=False)
    logger.exception("Unexpected error in the demo")
    return gr.Error(f"Something went wrong ({type(error).__name__}); the server log has the details.", print_exception=False)


def _files(value: Any) -> list[str]:
    if not value:
        return []
    return [getattr(item, "name", item) for item in (value if isinstance(value, list) else [value])]


def build_app(backend: DemoBackend) -> gr.Blocks:
    sampling = backend.base_config.sampling
    resolution = min(max(sampling.height, 256), 1024) // 64 * 64
    with gr.Blocks(title="CapHuman") as app:
        gr.Markdown(
            "## CapHuman: capture your moments in parallel universes\n"
            "Upload a photo of a face, describe a scene, and generate that person in it. Head position, pose, "
            "expression and lighting come from a pose photo and/or the sliders (3D head prior)."
        )
        with gr.Row():
            with gr.Column(scale=1):
                with gr.Tab("Person 1"):
                    with gr.Row():
                        reference = photo_upload(label="Reference photo", sources=["upload", "clipboard"], elem_id="reference")
                        pose = photo_upload(label="Pose photo (optional)", sources=["upload", "clipboard"], elem_id="pose")
                    more = gr.File(label="More photos of the same person (optional)", file_count="multiple", file_types=["image"], elem_id="more")
                    modes = gr.CheckboxGroup(MODES, value=["position", "pose"], label="Taken from the pose photo", elem_id="modes")
                with gr.Tab("Person 2 (optional)"):
                    with gr.Row():
                        reference2 = photo_upload(label="Reference photo 2", sources=["upload", "clipboard"], elem_id="reference2")
                        pose2 = photo_upload(label="Pose photo 2 (optional)", sources=["upload", "clipboard"], elem_id="pose2")
                    modes2 = gr.CheckboxGroup(MODES, value=["position", "pose"], label="Taken from pose photo 2", elem_id="modes2")
                    gr.Markdown("Without pose photos that give positions, the people stand side by side, left to right.")
                with gr.Accordion("Head control (3D)", open=True):
                    with gr.Row():
                        with gr.Column(min_width=240):
                            set_angles = gr.Checkbox(label="Set the head angles (otherwise from the photos)", value=False, elem_id="set_angles")
                            yaw = gr.Slider(-90, 90, value=0, step=1, label="Yaw (+ nose to the image's right)", elem_id="yaw")
                            pitch = gr.Slider(-60, 60, value=0, step=1, label="Pitch (+ nose down)", elem_id="pitch")
                            roll = gr.Slider(-60, 60, value=0, step=1, label="Roll (+ counter-clockwise)", elem_id="roll")
                        with gr.Column(min_width=240):
                            look_photo = photo_upload(
                                label="Expression / lighting from a photo (optional)", sources=["upload"], height=180, elem_id="look"
                            )
                            look_modes = gr.CheckboxGroup(LOOK_MODES, value=LOOK_MODES, show_label=False, elem_id="look_modes")
                    hint_preview = gr.Image(
                        label="Head condition (redraws as you move a slider): normals | albedo | shaded",
                        format="png",
                        interactive=False,
                        buttons=["download", "fullscreen"],
                        elem_id="hint_preview",
                    )
                prompt = gr.Textbox(label="Prompt", value="a photo of a person", elem_id="prompt")
                seed = gr.Number(label="Seed (-1: random)", value=12345, precision=0, elem_id="seed")
                with gr.Row():
                    run_button = gr.Button("Generate", variant="primary", elem_id="generate")
                    sweep_button = gr.Button("Turn the head", elem_id="sweep")
                with gr.Accordion("Advanced options", open=False):
                    num_images = gr.Slider(1, 12, value=sampling.num_images, step=1, label="Images", elem_id="num_images")
                    image_resolution = gr.Slider(256, 1024, value=resolution, step=64, label="Image resolution", elem_id="resolution")
                    strength = gr.Slider(0.0, 2.0, value=sampling.capface_strength, step=0.01, label="CapFace strength")
                    body_ready = backend.body_control_available()
                    body_strength = gr.Slider(
                        0.0,
                        2.0,
                        value=0.0,
                        step=0.01,
                        interactive=body_ready,
                        elem_id="body_strength",
                        label="Second ControlNet (OpenPose) strength"
                        if body_ready
                        else "Second ControlNet (OpenPose) strength: set model.body_controlnet in the config to use it",
                    )
                    body_modes = gr.CheckboxGroup(
                        list(BODY_MODES),
                        value=list(DEFAULT_BODY_MODES),
                        interactive=body_ready,
                        label="Drawn in the OpenPose map (body and hands from the pose photo)",
                    )
                    tau = gr.Slider(0, 1000, value=sampling.tau, step=1, label="Identity start step (tau; 0 = identity at every step)")
                    steps = gr.Slider(1, 100, value=sampling.num_inference_steps, step=1, label="Steps", elem_id="steps")
                    guidance = gr.Slider(0.0, 30.0, value=sampling.guidance_scale, step=0.1, label="Guidance scale")
                    eta = gr.Number(label="eta (DDIM)", value=sampling.eta)
                    added_prompt = gr.Textbox(label="Added prompt", value="")
                    negative_prompt = gr.Textbox(label="Negative prompt", value=sampling.negative_prompt)
                    styles = backend.styles()
                    style = gr.Dropdown(
                        styles, value=styles[0], label="Style (SD 1.5 files under the weights folder)", interactive=len(styles) > 1, elem_id="style"
                    )
                    with gr.Row():
                        yaw_from = gr.Slider(-90, 90, value=-45, step=1, label="Turn from yaw")
                        yaw_to = gr.Slider(-90, 90, value=45, step=1, label="Turn to yaw")
                        frames = gr.Slider(2, 25, value=7, step=1, label="Frames")
            with gr.Column(scale=1):
                status = gr.Markdown("", elem_id="status")
                gallery = gr.Gallery(label="Images", columns=2, height="auto", format="png", elem_id="gallery")
                downloads = gr.File(
                    label="Download: images (PNG, settings inside) and config.yaml", file_count="multiple", interactive=False, elem_id="downloads"
                )
                strip = gr.Image(label="Turn the head: images above their head conditions", format="png", interactive=False, elem_id="strip")
                with gr.Row():
                    animation = gr.Image(label="Animation (GIF)", format="gif", interactive=False, elem_id="animation")
                    video = gr.Video(label="Animation (MP4)", interactive=False, elem_id="video")

        person_inputs = [reference, more, pose, modes, reference2, pose2, modes2]
        control_inputs = [set_angles, yaw, pitch, roll, look_photo, look_modes]
        setting_inputs = [
            prompt,
            added_prompt,
            negative_prompt,
            seed,
            num_images,
            image_resolution,
            strength,
            body_strength,
            body_modes,
            tau,
            steps,
            guidance,
            eta,
            style,
        ]

        def people_from(ref, more_files, pose_photo, modes1, ref2, pose_photo2, modes_2) -> list[PersonInput]:
            people = [PersonInput(ref, _files(more_files), pose_photo, list(modes1 or []))]
            if ref2:
                people.append(PersonInput(ref2, [], pose_photo2, list(modes_2 or [])))
            return people

        def controls_from(use_angles, yaw_value, pitch_value, roll_value, look, look_names) -> HeadControls:
            angles = (yaw_value, pitch_value, roll_value) if use_angles else (None, None, None)
            return HeadControls(*angles, look_photo=look, look_modes=list(look_names or []))

        def settings_from(*values) -> GenerationSettings:
            names = [
                "prompt",
                "added_prompt",
                "negative_prompt",
                "seed",
                "num_images",
                "resolution",
                "capface_strength",
                "body_control_strength",
                "body_modes",
                "tau",
                "steps",
                "guidance_scale",
                "eta",
                "style",
            ]
            return GenerationSettings(**dict(zip(names, values, strict=True)))

        def split(values):
            people = people_from(*values[:7])
            controls = controls_from(*values[7:13])
            return people, controls, settings_from(*values[13:27])

        def on_preview(*values):
            people = people_from(*values[:7])
            controls = controls_from(*values[7:13])
            if not people[0].reference:
                return None
            try:
                return backend.preview(people, controls)
            except Exception as error:  # noqa: BLE001 - every failure becomes a message in the page
                raise page_error(error) from None

        def on_generate(*values, progress=gr.Progress(track_tqdm=True)):  # noqa: B008 - gradio injects progress through this default
            try:
                people, controls, settings = split(values)
                result = backend.generate(people, controls, settings, progress=lambda fraction, text: progress(fraction, desc=text))
            except Exception as error:  # noqa: BLE001
                raise page_error(error) from None
            images = [(str(path), f"seed {result.seed}, image {index + 1}") for index, path in enumerate(result.images)]
            message = f"Generated {len(images)} image(s) with seed {result.seed}."
            return images, [str(path) for path in result.files], result.hint_preview, message

        def on_sweep(*values, progress=gr.Progress()):  # noqa: B008 - as above
            try:
                people, controls, settings = split(values[:-3])
                result = backend.sweep(people[0], controls, settings, *values[-3:], progress=lambda fraction, text: progress(fraction, desc=text))
            except Exception as error:  # noqa: BLE001
                raise page_error(error) from None
            message = f"Turned the head over {len(result.frames)} frames with seed {result.seed}."
            return str(result.strip), str(result.gif), str(result.mp4) if result.mp4 else None, message

        preview_inputs = person_inputs + control_inputs + [image_resolution]
        # Previews render the head prior only (tens of ms): they run beside a generation, and a
        # slider drag collapses to its latest value.
        preview_event = {
            "fn": on_preview,
            "inputs": preview_inputs[:-1],
            "outputs": hint_preview,
            "trigger_mode": "always_last",
            "concurrency_limit": 4,
            "concurrency_id": "preview",
            "show_progress": "hidden",
        }
        for component in [reference, pose, more, modes, reference2, pose2, modes2, look_photo, look_modes, set_angles]:
            component.change(**preview_event)
        for slider in (yaw, pitch, roll):  # moving a slider means "use the sliders"
            slider.input(lambda: True, None, set_angles, queue=False, show_progress="hidden").then(**preview_event)
        inputs = person_inputs + control_inputs + setting_inputs
        run_button.click(on_generate, inputs, [gallery, downloads, hint_preview, status], concurrency_id=GPU, concurrency_limit=1)
        sweep_button.click(on_sweep, inputs + [yaw_from, yaw_to, frames], [strip, animation, video, status], concurrency_id=GPU, concurrency_limit=1)
    # One diffusion job at a time on the GPU; everyone else waits in the queue (and sees their place).
    app.queue(default_concurrency_limit=1, max_size=64)
    return app


def launch(backend: DemoBackend, host: str = "127.0.0.1", port: int = 7860, block: bool = True) -> gr.Blocks:
    app = build_app(backend)
    app.launch(
        server_name=host,
        server_port=port,
        share=False,
        prevent_thread_lock=not block,
        show_error=False,
        quiet=True,
        ssr_mode=False,
        theme=THEME,
        allowed_paths=[str(backend.output_dir)],
        footer_links=[],
    )
    return app
