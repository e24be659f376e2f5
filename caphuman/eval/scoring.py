"""Scoring a run: every generated image against its reference photo, prompt and requested head.

Per image (one row of :class:`ImageScore`): whether a face was found (mediapipe, as everywhere
in this package), identity similarity (see :mod:`caphuman.eval.identity_similarity`), CLIP-T and prompt
accuracy (:mod:`caphuman.eval.clip_score`), head-coefficient RMSEs and head-pose error
(:mod:`caphuman.eval.head_metrics`). Per (method, identity, prompt, condition): face diversity
across seeds (:mod:`caphuman.eval.diversity`), copied onto each of its rows.

Face metrics of an image without a detected face are NaN and left out of the means; the
detection rate reports how many there were, so a method cannot look better by losing faces
unnoticed.

Scores are cached per (identity, prompt, condition) in RUN/scores/<method>.jsonl together with
the scorer's settings and each image's modification time, so a rerun scores only new or
regenerated images, and a change of scorer (another recogniser, CLIP now present) rescores all.
A part of a split run (:mod:`caphuman.parallel`) scores only its own units and appends to its
own RUN/scores/<method>.<part tag>.jsonl; every reader takes the cached scores of all files.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
from PIL import Image

from caphuman.errors import InputImageError
from caphuman.eval.benchmark import BenchmarkSpec, Identity
from caphuman.eval.clip_score import ClipAvailability, clip_t_scores, prompt_hits
from caphuman.eval.diversity import pairwise_identity_distance
from caphuman.eval.head_metrics import HeadErrors, head_errors
from caphuman.eval.identity_similarity import IdentityModel, cosine_similarity
from caphuman.eval.methods import MethodContext, MethodSpec
from caphuman.eval.runner import WorkUnit, image_path, method_folder, unit_key, work_units
from caphuman.parallel import WHOLE, Part

logger = logging.getLogger(__name__)

SCORES_DIR = "scores"
# Bump when a metric's definition changes, so cached scores are recomputed.
SCORING_VERSION = 1


@dataclass
class ImageScore:
    """Scores of one generated image (NaN where a metric is not measurable or not available)."""

    method: str
    identity: str
    prompt_id: str
    prompt: str
    category: str
    condition: str
    requested_yaw: float
    requested_pitch: float
    requested_roll: float
    seed: int
    path: str
    face_detected: int
    id_similarity: float
    clip_t: float
    prompt_correct: float
    shape_rmse: float
    pose_rmse: float
    expression_rmse: float
    lighting_rmse: float
    pose_error_deg: float
    estimated_yaw: float
    estimated_pitch: float
    estimated_roll: float
    diversity: float


SCORE_COLUMNS = tuple(f.name for f in fields(ImageScore))


class Scorer:
    """Scores images of one run; holds the evaluation models and per-identity references.

    Args:
        context: the run's shared detector, head prior and reference photos.
        identity_model: the evaluation recogniser.
        clip: CLIP availability (scorer or None, and the note for the report).
        spec: the benchmark (prompt accuracy ranks each image among all of its prompts).
    """

    def __init__(self, context: MethodContext, identity_model: IdentityModel, clip: ClipAvailability, spec: BenchmarkSpec):
        self.context = context
        self.identity_model = identity_model
        self.clip = clip
        self.spec = spec
        self._reference_embeddings: dict[str, np.ndarray] = {}
        self._prompt_embeddings: dict[str, np.ndarray] = {}

    @property
    def settings(self) -> dict:
        """What the scores depend on besides the images (stored with cached scores)."""
        return {
            "version": SCORING_VERSION,
            "identity_model": self.identity_model.label,
            "clip": self.clip.note,
            "head_prior": self.context.config.model.head_prior,
            "prompts": [prompt.text for prompt in self.spec.prompts],
        }

    def reference_embedding(self, identity: Identity) -> np.ndarray:
        if identity.identity_id not in self._reference_embeddings:
            prepared = self.context.identity(identity)
            self._reference_embeddings[identity.identity_id] = self.identity_model.embed_face(prepared.image, prepared.face)
        return self._reference_embeddings[identity.identity_id]

    def prompt_embeddings(self, subject: str) -> np.ndarray:
        """(P, D) CLIP embeddings of every benchmark prompt with ``subject`` filled in."""
        if subject not in self._prompt_embeddings:
            self._prompt_embeddings[subject] = self.clip.scorer.embed_texts([prompt.render(subject) for prompt in self.spec.prompts])
        return self._prompt_embeddings[subject]

    def head_estimate(self, image: np.ndarray, face):
        """The head prior's reconstruction of a generated image's face (None when it fails)."""
        prior = self.context.head_prior
        try:
            if hasattr(prior, "reconstruct_from_landmarks"):
                # The built-in prior fits mediapipe points: reuse the detection already made.
                return prior.reconstruct_from_landmarks(face.landmarks, image)
            return prior.reconstruct(image, face_index=0)
        except InputImageError:
            return None

    def score_unit(self, method: str, unit: WorkUnit, paths: dict[int, Path], run_dir: Path) -> list[ImageScore]:
        """Score the images of one (identity, prompt, condition), one per seed."""
        identity, condition = unit.identity, unit.condition
        reference = self.reference_embedding(identity)
        requested = self.context.requested_head(identity, condition)
        requested_angles = requested.rotation[0].tolist()
        seeds = sorted(paths)
        images = [np.asarray(Image.open(paths[seed]).convert("RGB")) for seed in seeds]

        clip_t = [math.nan] * len(images)
        correct = [math.nan] * len(images)
        if self.clip.scorer is not None:
            image_embeds = self.clip.scorer.embed_images(images)
            prompts = self.prompt_embeddings(identity.subject)
            index = self.spec.prompts.index(unit.prompt)
            clip_t = clip_t_scores(image_embeds, np.repeat(prompts[index : index + 1], len(images), axis=0)).tolist()
            correct = prompt_hits(image_embeds, prompts, [index] * len(images)).astype(float).tolist()

        rows, embeddings = [], []
        for position, (seed, image) in enumerate(zip(seeds, images, strict=True)):
            faces = self.context.detector.detect(np.ascontiguousarray(image))
            similarity, errors = math.nan, HeadErrors.missing()
            if faces:
                embedding = self.identity_model.embed_face(image, faces[0])
                embeddings.append(embedding)
                similarity = cosine_similarity(reference, embedding)
                estimate = self.head_estimate(image, faces[0])
                if estimate is not None:
                    errors = head_errors(requested, estimate)
            rows.append(
                ImageScore(
                    method=method,
                    identity=identity.identity_id,
                    prompt_id=unit.prompt.prompt_id,
                    prompt=unit.prompt.render(identity.subject),
                    category=unit.prompt.category,
                    condition=condition.name,
                    requested_yaw=float(requested_angles[0]),
                    requested_pitch=float(requested_angles[1]),
                    requested_roll=float(requested_angles[2]),
                    seed=int(seed),
                    path=str(paths[seed].relative_to(run_dir)),
                    face_detected=int(bool(faces)),
                    id_similarity=similarity,
                    clip_t=float(clip_t[position]),
                    prompt_correct=float(correct[position]),
                    **asdict(errors),
                    diversity=math.nan,
                )
            )
        diversity = pairwise_identity_distance(embeddings) if len(embeddings) >= 2 else math.nan
        for row in rows:
            row.diversity = diversity
        return rows


def _load_cache(paths: list[Path]) -> dict[str, list[dict]]:
    """Cached records of every file, per unit key, latest first (one unit can have several: a
    rescore appends, and a unit may have been scored by another part in an earlier split)."""
    records: dict[str, list[dict]] = {}
    for path in paths:
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by an interrupted run; its unit is rescored
            records.setdefault(record["key"], []).insert(0, record)
    return records


def cache_files(run_dir: Path, method: str) -> list[Path]:
    """RUN/scores/<method>.jsonl and every part's RUN/scores/<method>.part-*.jsonl."""
    folder, name = run_dir / SCORES_DIR, method_folder(method)
    return [path for path in [folder / f"{name}.jsonl", *sorted(folder.glob(f"{name}.part-*.jsonl"))] if path.is_file()]


def score_run(
    spec: BenchmarkSpec,
    identities: list[Identity],
    methods: list[MethodSpec],
    run_dir: str | Path,
    scorer: Scorer,
    part: Part = WHOLE,
    owned: set[tuple[str, str]] | None = None,
) -> tuple[list[ImageScore], dict[str, int]]:
    """Score every generated image of ``methods`` (cached units are reused).

    Args:
        part, owned: a part of a split run scores only the (method, unit key) pairs in ``owned``
            (see :func:`caphuman.eval.runner.owned_units`) into its own cache file.
    Returns:
        (rows in benchmark order, {method: number of images scored now}).
    """
    run_dir = Path(run_dir)
    settings = scorer.settings
    rows: list[ImageScore] = []
    scored_now: dict[str, int] = {}
    for method in methods:
        name = method_folder(method.name)
        cache_path = run_dir / SCORES_DIR / (f"{name}.jsonl" if part.whole else f"{name}.{part.tag}.jsonl")
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        cache = _load_cache(cache_files(run_dir, method.name))
        start, count = time.perf_counter(), 0
        with cache_path.open("a", encoding="utf-8") as stream:
            for unit in work_units(spec, identities):
                key = unit_key(unit)
                if owned is not None and (method.name, key) not in owned:
                    continue
                paths = {
                    seed: image_path(run_dir, method.name, unit.identity.identity_id, unit.prompt.prompt_id, unit.condition.name, seed)
                    for seed in spec.seeds
                }
                paths = {seed: path for seed, path in paths.items() if path.is_file()}
                if not paths:
                    continue
                stamps = {str(seed): path.stat().st_mtime_ns for seed, path in paths.items()}
                cached = next((r for r in cache.get(key, []) if r["settings"] == settings and r["stamps"] == stamps), None)
                if cached is not None:
                    rows.extend(ImageScore(**row) for row in cached["rows"])
                    continue
                unit_rows = scorer.score_unit(method.name, unit, paths, run_dir)
                stream.write(json.dumps({"key": key, "settings": settings, "stamps": stamps, "rows": [asdict(r) for r in unit_rows]}) + "\n")
                stream.flush()
                rows.extend(unit_rows)
                count += len(unit_rows)
        scored_now[method.name] = count
        logger.info("%s: scored %d image(s) (%.1f s).", method.name, count, time.perf_counter() - start)
    return rows, scored_now


__all__ = ["ImageScore", "SCORE_COLUMNS", "Scorer", "cache_files", "score_run"]
