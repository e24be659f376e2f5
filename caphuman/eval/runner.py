"""Generation with resume: every (method, identity, prompt, condition, seed) image, written once.

Layout of a run folder::

    RUN/manifest.json                     settings of the run (checked on every rerun)
    RUN/images/<method>/<identity>/<prompt_id>/<condition>_seed<seed>.png

Each image is written to a temporary file and renamed into place, so an interrupted run never
leaves a half-written PNG under its final name; a rerun skips every image already there and
generates the missing seeds of a (method, identity, prompt, condition) in one pipeline call.
Seeds are independent generators, so an image depends on its own seed only (up to the last bits
of floating point, which batch size can change on some kernels).

The manifest records the benchmark, the identities, the model config and weights folder, and
per method the settings its images were made with; a rerun into the same folder with a
different model/sampling config, or with a head condition whose values changed, stops with a
:class:`caphuman.errors.ConfigError` instead of mixing images made two ways.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from PIL import Image

from caphuman.config import config_to_dict
from caphuman.errors import ConfigError
from caphuman.eval.benchmark import BenchmarkSpec, HeadCondition, Identity, PromptSpec
from caphuman.eval.methods import GenerationRequest, MethodContext, MethodSpec

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
IMAGES_DIR = "images"


@dataclass(frozen=True)
class WorkUnit:
    """One (identity, prompt, head condition): the images of its seeds are generated together."""

    identity: Identity
    prompt: PromptSpec
    condition: HeadCondition


@dataclass
class GenerationSummary:
    """What one method's generation stage did."""

    method: str
    generated: int
    skipped: int
    seconds: float


def image_path(run_dir: str | Path, method: str, identity_id: str, prompt_id: str, condition: str, seed: int) -> Path:
    """Where the image of one (method, identity, prompt, condition, seed) lives in a run folder."""
    return Path(run_dir) / IMAGES_DIR / method_folder(method) / identity_id / prompt_id / f"{condition}_seed{seed}.png"


def method_folder(method: str) -> str:
    """A folder name for a method (hooks are named package.module:function)."""
    return method.replace(":", "--").replace("/", "_")


def work_units(spec: BenchmarkSpec, identities: list[Identity]) -> Iterator[WorkUnit]:
    """Identity, then condition, then prompt: the rendered hint changes only when the condition does."""
    for identity in identities:
        for condition in spec.conditions:
            for prompt in spec.prompts:
                yield WorkUnit(identity, prompt, condition)


def write_png_atomically(image: Image.Image, path: Path) -> None:
    """Write to a temporary file in the same folder, then rename (atomic on one file system)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        image.save(tmp, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomically(data: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(handle, "w", encoding="utf-8") as stream:
        json.dump(data, stream, indent=2, sort_keys=True, default=str)
    os.replace(tmp, path)


def method_settings(context: MethodContext, method: MethodSpec) -> dict:
    """What a method's images depend on besides the spec item: the model/sampling config and weights."""
    settings = {"config": config_to_dict(context.config), "weights": str(Path(context.weights_dir).resolve())}
    # Through JSON and back, so it compares equal to what the manifest file holds (tuples -> lists).
    return json.loads(json.dumps(settings, default=str))


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    keys = sorted(set(old) | set(new))
    found = []
    for key in keys:
        name = f"{prefix}{key}"
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found.extend(_differences(a, b, f"{name}."))
        elif a != b:
            found.append(f"{name}: {a!r} -> {b!r}")
    return found


def update_manifest(
    run_dir: Path, spec: BenchmarkSpec, benchmark_path: str, identities: list[Identity], context: MethodContext, methods: list[MethodSpec]
) -> dict:
    """Create or extend RUN/manifest.json; refuse settings that differ from those already recorded.

    Raises:
        ConfigError: a method was generated here before with another config, or a head condition
            of the same name had other values.
    """
    path = run_dir / MANIFEST
    manifest = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"created": time.strftime("%Y-%m-%d %H:%M:%S")}
    conditions = manifest.setdefault("conditions", {})
    for condition in spec.conditions:
        values = condition.values()
        if condition.name in conditions and conditions[condition.name] != values:
            raise ConfigError(
                f"Head condition '{condition.name}' had other values in {path} ({conditions[condition.name]}); rename it or use a new --out."
            )
        conditions[condition.name] = values
    prompts = manifest.setdefault("prompts", {})
    prompts.update({prompt.prompt_id: {"text": prompt.text, "category": prompt.category} for prompt in spec.prompts})
    recorded = manifest.setdefault("methods", {})
    for method in methods:
        settings = method_settings(context, method)
        if method.name in recorded and recorded[method.name]["settings"] != settings:
            changes = _differences(recorded[method.name]["settings"], settings)
            raise ConfigError(
                f"{run_dir} holds '{method.name}' images made with other settings ({'; '.join(changes[:3])}); use a new --out or the same config."
            )
        recorded.setdefault(method.name, {"settings": settings, "description": method.description})
    manifest["benchmark"] = {"name": spec.name, "file": str(Path(benchmark_path).resolve()), "seeds": list(spec.seeds)}
    manifest.setdefault("identities", {}).update({i.identity_id: {"path": str(i.path.resolve()), "subject": i.subject} for i in identities})
    manifest["device"] = str(context.device)
    manifest["versions"] = _versions()
    write_json_atomically(manifest, path)
    return manifest


def _versions() -> dict:
    import diffusers
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__}


def generate(
    spec: BenchmarkSpec, identities: list[Identity], methods: list[MethodSpec], run_dir: str | Path, context: MethodContext
) -> list[GenerationSummary]:
    """Generate every missing image of every method (see the module docstring for the layout)."""
    run_dir = Path(run_dir)
    sampling = context.config.sampling
    summaries = []
    for method in methods:
        start, generated, skipped = time.perf_counter(), 0, 0
        for unit in work_units(spec, identities):
            paths = {
                seed: image_path(run_dir, method.name, unit.identity.identity_id, unit.prompt.prompt_id, unit.condition.name, seed)
                for seed in spec.seeds
            }
            missing = tuple(seed for seed, path in paths.items() if not path.is_file())
            skipped += len(paths) - len(missing)
            if not missing:
                continue
            request = GenerationRequest(
                identity=unit.identity, prompt=unit.prompt, prompt_text=unit.prompt.render(unit.identity.subject),
                condition=unit.condition, seeds=missing, height=sampling.height, width=sampling.width,
            )
            images = method.generate(request, context)
            if len(images) != len(missing):
                raise RuntimeError(f"method '{method.name}' returned {len(images)} images for {len(missing)} seeds")
            for seed, image in zip(missing, images):
                write_png_atomically(image, paths[seed])
            generated += len(missing)
            logger.debug("%s: %s / %s / %s seeds %s", method.name, unit.identity.identity_id, unit.prompt.prompt_id, unit.condition.name, missing)
        seconds = time.perf_counter() - start
        logger.info("%s: generated %d image(s), %d already there (%.1f s).", method.name, generated, skipped, seconds)
        summaries.append(GenerationSummary(method.name, generated, skipped, seconds))
    return summaries


__all__ = [
    "GenerationSummary",
    "WorkUnit",
    "generate",
    "image_path",
    "method_folder",
    "update_manifest",
    "work_units",
    "write_json_atomically",
    "write_png_atomically",
]
