"""Generation with resume: every (method, identity, prompt, condition, seed) image, written once.

Layout of a run folder::

    RUN/manifest.json                     settings of the run (checked on every rerun)
    RUN/images/<method>/<identity>/<prompt_id>/<condition>_seed<seed>.png

Each image is written to a temporary file and renamed into place, so an interrupted run never
leaves a half-written PNG under its final name; a rerun skips every image already there and
generates the missing seeds of a (method, identity, prompt, condition) in one pipeline call.
Seeds are independent generators, so an image depends on its own seed only (up to the last bits
of floating point, which batch size can change on some kernels).

Batches and parts: each method's (identity, prompt, condition) units are cut, identity by
identity, into *blocks* of ``max(1, batch_size // seeds)`` whole units, numbered across the run;
a block's missing images are made in pipeline calls of up to ``batch_size`` images. Under
``torchrun`` or ``--part i/N`` (:class:`caphuman.parallel.Part`) block ``b`` belongs to part
``b mod N``: the blocks, and so every pipeline call's contents, are the same whatever the number
of parts, so a split run writes the very images one process would. A part scores the units of
its own blocks (their images are its own), so no part reads another's files before the merge.

The manifest records the benchmark, the identities, the model config and weights folder, and
per method the settings its images were made with; a rerun into the same folder with a
different model/sampling config, or with a head condition whose values changed, stops with a
:class:`caphuman.errors.ConfigError` instead of mixing images made two ways.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from caphuman.config import config_to_dict
from caphuman.errors import ConfigError
from caphuman.eval.benchmark import BenchmarkSpec, HeadCondition, Identity, PromptSpec
from caphuman.eval.methods import GenerationRequest, MethodContext, MethodSpec
from caphuman.outputs import save_image_atomically, write_json_atomically
from caphuman.parallel import WHOLE, Part

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
IMAGES_DIR = "images"


@dataclass(frozen=True)
class WorkUnit:
    """One (identity, prompt, head condition): the images of its seeds are generated together."""

    identity: Identity
    prompt: PromptSpec
    condition: HeadCondition


@dataclass(frozen=True)
class Block:
    """Consecutive units of one method and identity, generated together by one part."""

    number: int
    method: MethodSpec
    units: tuple[WorkUnit, ...]


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


def units_per_block(batch_size: int, seeds: int) -> int:
    """Whole units per block: as many as fill a batch (at least one)."""
    return max(1, batch_size // max(1, seeds))


def blocks(spec: BenchmarkSpec, identities: list[Identity], methods: list[MethodSpec], batch_size: int) -> Iterator[Block]:
    """Every method's units cut into numbered blocks (see the module docstring)."""
    size = units_per_block(batch_size, len(spec.seeds))
    number = 0
    for method in methods:
        for identity in identities:
            units = list(work_units(spec, [identity]))
            for start in range(0, len(units), size):
                yield Block(number, method, tuple(units[start : start + size]))
                number += 1


def unit_key(unit: WorkUnit) -> str:
    return f"{unit.identity.identity_id}/{unit.prompt.prompt_id}/{unit.condition.name}"


def owned_units(spec: BenchmarkSpec, identities: list[Identity], methods: list[MethodSpec], batch_size: int, part: Part) -> set[tuple[str, str]]:
    """(method name, unit key) of every unit in ``part``'s blocks."""
    return {
        (block.method.name, unit_key(unit))
        for block in blocks(spec, identities, methods, batch_size)
        if part.owns_index(block.number)
        for unit in block.units
    }


def missing_images(spec: BenchmarkSpec, identities: list[Identity], methods: list[MethodSpec], run_dir: str | Path) -> int:
    """How many images of the run are not on disk (a part that has not finished)."""
    return sum(
        not image_path(run_dir, method.name, unit.identity.identity_id, unit.prompt.prompt_id, unit.condition.name, seed).is_file()
        for method in methods
        for unit in work_units(spec, identities)
        for seed in spec.seeds
    )


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


def read_manifest(path: Path) -> dict:
    """RUN/manifest.json; a damaged one is a user error naming the file (it decides whether
    images are reused, so it is never guessed at)."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise ConfigError(f"The run manifest '{path}' is damaged ({error}); restore it or use a new --out.") from None
    sections = ("conditions", "prompts", "methods", "identities")
    if not isinstance(manifest, dict) or not all(isinstance(manifest.get(key, {}), dict) for key in sections):
        raise ConfigError(f"The run manifest '{path}' is damaged (not the layout caphuman eval writes); restore it or use a new --out.")
    return manifest


def file_digest(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_identity_photos(recorded: dict, identities: list[Identity], manifest_path: Path) -> None:
    """Images are stored by identity name; a photo replaced under the same name would silently
    reuse images of the old person, so a changed photo is refused (its content is recorded)."""
    for identity in identities:
        earlier = recorded.get(identity.identity_id)
        if not isinstance(earlier, dict) or "sha256" not in earlier:
            continue
        if earlier["sha256"] != file_digest(identity.path):
            raise ConfigError(
                f"The photo of identity '{identity.identity_id}' ({identity.path}) is not the one this run's images were made from "
                f"(see {manifest_path}); use a new --out, or rename the photo to make it a new identity."
            )


def update_manifest(
    run_dir: Path,
    spec: BenchmarkSpec,
    benchmark_path: str,
    identities: list[Identity],
    context: MethodContext,
    methods: list[MethodSpec],
    write: bool = True,
) -> dict:
    """Create or extend RUN/manifest.json; refuse settings that differ from those already recorded.

    ``write=False`` only checks (every part checks; one part, or the merge, writes the file, so
    parts never race on it).

    Raises:
        ConfigError: a method was generated here before with another config, or a head condition
            of the same name had other values.
    """
    path = run_dir / MANIFEST
    manifest = read_manifest(path) if path.is_file() else {"created": time.strftime("%Y-%m-%d %H:%M:%S")}
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
    check_identity_photos(manifest.setdefault("identities", {}), identities, path)
    manifest["identities"].update(
        {i.identity_id: {"path": str(i.path.resolve()), "subject": i.subject, "sha256": file_digest(i.path)} for i in identities}
    )
    manifest["device"] = str(context.device)
    manifest["versions"] = _versions()
    if write:
        write_json_atomically(path, manifest)
    return manifest


def _versions() -> dict:
    import diffusers
    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
    }


def generate(
    spec: BenchmarkSpec,
    identities: list[Identity],
    methods: list[MethodSpec],
    run_dir: str | Path,
    context: MethodContext,
    batch_size: int = 1,
    part: Part = WHOLE,
    progress: bool = False,
) -> list[GenerationSummary]:
    """Generate every missing image of ``part``'s blocks (see the module docstring for the layout).

    Args:
        batch_size: images per pipeline call (methods without batch support get one call per
            (identity, prompt, condition) instead).
        part: which blocks are this process's (default: all).
        progress: show a progress bar of images.
    """
    from tqdm import tqdm

    run_dir = Path(run_dir)
    sampling = context.config.sampling
    mine = [block for block in blocks(spec, identities, methods, batch_size) if part.owns_index(block.number)]
    counts = {method.name: [0, 0, 0.0] for method in methods}  # generated, skipped, seconds
    total = sum(len(block.units) for block in mine) * len(spec.seeds)
    with tqdm(total=total, unit="image", desc="generate", disable=not progress) as bar:
        for block in mine:
            start = time.perf_counter()
            count = counts[block.method.name]
            todo: list[tuple[WorkUnit, int, Path]] = []
            for unit in block.units:
                for seed in spec.seeds:
                    path = image_path(run_dir, block.method.name, unit.identity.identity_id, unit.prompt.prompt_id, unit.condition.name, seed)
                    if path.is_file():
                        count[1] += 1
                    else:
                        todo.append((unit, seed, path))
            bar.update(len(block.units) * len(spec.seeds) - len(todo))
            for first in range(0, len(todo), batch_size):
                chunk = todo[first : first + batch_size]
                requests, paths = [], []
                for unit, seed, path in chunk:  # consecutive images of one unit -> one request
                    if requests and requests[-1][0] is unit:
                        requests[-1][1].append(seed)
                    else:
                        requests.append((unit, [seed]))
                    paths.append(path)
                made = block.method.generate_requests(
                    [
                        GenerationRequest(
                            identity=unit.identity,
                            prompt=unit.prompt,
                            prompt_text=unit.prompt.render(unit.identity.subject),
                            condition=unit.condition,
                            seeds=tuple(seeds),
                            height=sampling.height,
                            width=sampling.width,
                        )
                        for unit, seeds in requests
                    ],
                    context,
                )
                images = [image for per_request in made for image in per_request]
                if len(images) != len(chunk):
                    raise RuntimeError(f"method '{block.method.name}' returned {len(images)} images for {len(chunk)} seeds")
                for image, path in zip(images, paths, strict=True):
                    save_image_atomically(image, path)
                count[0] += len(chunk)
                bar.update(len(chunk))
                logger.debug("%s: block %d, %d image(s)", block.method.name, block.number, len(chunk))
            count[2] += time.perf_counter() - start
    summaries = []
    for method in methods:
        generated, skipped, seconds = counts[method.name]
        where = "" if part.whole else f" [{part}]"
        logger.info("%s: generated %d image(s), %d already there (%.1f s)%s.", method.name, generated, skipped, seconds, where)
        summaries.append(GenerationSummary(method.name, generated, skipped, seconds))
    return summaries


__all__ = [
    "Block",
    "GenerationSummary",
    "WorkUnit",
    "blocks",
    "generate",
    "image_path",
    "method_folder",
    "missing_images",
    "owned_units",
    "unit_key",
    "units_per_block",
    "update_manifest",
    "work_units",
]
