"""A folder of photos -> a sharded training dataset of :class:`FaceRecord` (see docs/DATASET.md).

Per photo (:class:`PhotoProcessor`), with the same face and head-prior code that sampling uses,
so training and sampling compute every condition the same way:
1. ``load_image``; mediapipe detection; the largest face.
2. ``aligned_square_crop`` at the stored size S: the training target. The face's mesh points
   are mapped through the crop's transform (measured against re-detecting on the crop: about
   1 px mean difference at S = 512, at no cost).
3. The reference inputs exactly as ``caphuman sample`` makes them from the original photo
   (``CapHumanSession.reference_inputs``): the recogniser's crop (MTCNN's for FaceNet) -> global
   embedding, and the 224 px CLIP input with non-face pixels white (``identity.clip_crop``).
   The original photo has more pixels than a small S would.
4. The face mask of the aligned image: per ``identity.face_parser`` (BiSeNet or the mesh oval).
5. The head prior on the aligned image (the built-in prior reuses the mapped mesh points; DECA
   detects on its own), and the 9-channel hint rendered at S.

Runs are resumable: a photo whose key is in the index is not processed again, and a photo that
was unreadable or had no face is not retried while its size and modification time are unchanged
(unless ``retry_failed``); photos that hit an unexpected error are always retried. Bad photos
(unreadable, not an image, no face) are skipped and listed in ``report.json`` with the reason.

Split runs (``--part i/N`` or torchrun ranks, :class:`caphuman.parallel.Part`): a photo belongs to
the part given by a stable hash of its path; each part writes a complete dataset of its own
photos under ``DATASET/parts/part-iii-of-nnn/`` and reads nothing of the other parts. Then
:func:`merge_parts` (rank 0 at the end under torchrun, ``--merge`` otherwise) writes the one
``DATASET/index.jsonl`` naming the parts' shards where they are, and one report.json.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from caphuman.config import HEAD_PRIORS, CapHumanConfig, load_config, load_yaml_mapping
from caphuman.data.records import CLIP_CROP_SIZE, FaceRecord, head_params_to_arrays, record_key
from caphuman.data.shards import INDEX_FILE, REPORT_FILE, SETTINGS_FILE, IndexEntry, ShardWriter, claim_dataset, read_index
from caphuman.errors import CapHumanError, ConfigError, InputImageError
from caphuman.faces.alignment import aligned_square_crop
from caphuman.faces.detection import DetectedFace
from caphuman.head.builtin.builtin_prior import BuiltinHeadPrior
from caphuman.outputs import write_bytes_atomically
from caphuman.parallel import WHOLE, Part
from caphuman.session import CapHumanSession
from caphuman.weights.registry import default_location, missing_weights

logger = logging.getLogger(__name__)

DEFAULT_CAPTION = "a photo of a person"
PARTS_DIR = "parts"
DATASET_FORMAT_VERSION = 1
# Settings that change what a record contains: a rerun into the same folder must match them, or
# the dataset would mix two kinds of records.
_RECORD_DEFINING_SETTINGS = (
    "format_version", "image_size", "clip_size", "clip_crop", "facenet_crop", "face_recognizer", "face_embedding_dim", "head_prior", "face_parser",
)  # fmt: skip
# What datasets written before a setting was recorded used (their records were made that way).
_SETTINGS_BEFORE_RECORDED = {"clip_crop": "aligned", "facenet_crop": "mesh"}

# Why a photo was skipped (report.json "kind").
UNREADABLE = "unreadable"  # missing, not an image, truncated or corrupt
NO_FACE = "no_face"  # no face found (in the photo, or by the head prior on the aligned crop)
FAILED = "failed"  # anything else (an unexpected error, logged with its traceback)


@dataclass
class PreprocessSettings:
    """What `caphuman preprocess` was asked to do.

    Attributes:
        images: folder of photos (searched recursively; hidden files are ignored).
        out: dataset folder (created; an existing one is resumed).
        captions: optional jsonl ({"file": ..., "caption": ...} per line) or csv (file,caption)
            file; "file" is the path relative to ``images`` or just the file name.
        config: model config whose recogniser and head prior are used (null: the defaults, i.e.
            the published FaceNet + DECA).
        weights: folder with the weights files (recogniser, DECA, BiSeNet).
        image_size: stored side S of the aligned image, mask and hint.
        workers: parallel processes (each loads its own models); <= 1 runs in this process.
        shard_size: records per shard.
        head_prior: overrides the config's model.head_prior ("builtin" or "deca").
        device: torch device for the models ("cpu", "cuda", ...).
        retry_failed: process again photos skipped in an earlier run as unreadable or faceless.
        default_caption: caption of photos the captions file does not cover.
    """

    images: str
    out: str
    captions: str | None = None
    config: str | None = None
    weights: str = "checkpoints"
    image_size: int = 512
    workers: int = 1
    shard_size: int = 1000
    head_prior: str | None = None
    device: str = "cpu"
    retry_failed: bool = False
    default_caption: str = DEFAULT_CAPTION

    def __post_init__(self) -> None:
        if self.image_size < 16:
            raise ConfigError(f"--image-size must be at least 16, got {self.image_size}.")
        if self.shard_size < 1:
            raise ConfigError(f"--shard-size must be at least 1, got {self.shard_size}.")
        if self.head_prior is not None and self.head_prior not in HEAD_PRIORS:
            raise ConfigError(f"--head-prior must be builtin or deca, got '{self.head_prior}'.")

    def model_config(self) -> CapHumanConfig:
        overrides = {"model": {"head_prior": self.head_prior}} if self.head_prior else None
        return load_config(self.config, overrides)


@dataclass
class SkippedPhoto:
    """A photo that is not in the dataset, and why. ``size``/``mtime_ns`` tell a changed file."""

    source: str
    kind: str
    reason: str
    size: int = -1
    mtime_ns: int = -1


@dataclass
class PhotoResult:
    """What a worker sends back for one photo: the encoded record, or why it was skipped."""

    source: str
    key: str
    caption: str
    caption_missing: bool
    files: dict[str, bytes] | None = None
    skipped: SkippedPhoto | None = None
    seconds: float = 0.0


@dataclass
class PreprocessSummary:
    """Counts of one run (also stored as report.json's "last_run")."""

    processed: int = 0
    already_done: int = 0
    previously_skipped: int = 0
    skipped: list[SkippedPhoto] = field(default_factory=list)
    missing_captions: int = 0
    records_in_dataset: int = 0
    seconds: float = 0.0
    seconds_per_photo: float = 0.0
    interrupted: bool = False


# ---------------------------------------------------------------------------------- inputs


def list_photos(images: Path, exclude: Iterable[Path] = ()) -> list[str]:
    """Every regular, non-hidden file under ``images`` as sorted '/'-separated relative paths.

    Not filtered by extension on purpose: a file that is not an image is reported, not silently
    dropped. ``exclude`` removes files at or under those paths (the output folder, the captions).
    """
    if not images.is_dir():
        raise InputImageError(f"Images folder '{images}' does not exist or is not a folder.")
    excluded = [path.resolve() for path in exclude]
    sources = []
    for directory, subdirectories, files in os.walk(images):
        subdirectories[:] = sorted(d for d in subdirectories if not d.startswith("."))
        for name in files:
            path = Path(directory) / name
            if name.startswith(".") or not path.is_file():
                continue
            resolved = path.resolve()
            if any(resolved == other or other in resolved.parents for other in excluded):
                continue
            sources.append(path.relative_to(images).as_posix())
    return sorted(sources)


def load_captions(path: str | os.PathLike) -> dict[str, str]:
    """{file: caption} from a jsonl ({"file", "caption"} per line) or csv (file,caption) file.

    Raises:
        CapHumanError: the file is missing or a line/row lacks "file" or "caption".
    """
    path = Path(path)
    if not path.is_file():
        raise CapHumanError(f"Captions file '{path}' does not exist.")
    captions: dict[str, str] = {}
    if path.suffix.lower() == ".csv":
        import csv

        with open(path, newline="", encoding="utf-8") as stream:
            reader = csv.DictReader(stream)
            if reader.fieldnames is None or not {"file", "caption"} <= set(reader.fieldnames):
                raise CapHumanError(f"Captions file '{path}' needs a header row with the columns file,caption.")
            for row in reader:
                captions[row["file"].strip()] = row["caption"].strip()
        return captions
    with open(path, encoding="utf-8") as stream:
        for number, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                captions[str(item["file"]).strip()] = str(item["caption"]).strip()
            except (ValueError, KeyError, TypeError):
                raise CapHumanError(f'Captions file \'{path}\' line {number} is not a JSON object with "file" and "caption".') from None
    return captions


def caption_for(source: str, captions: dict[str, str], by_name: dict[str, str], default: str) -> tuple[str, bool]:
    """(caption, missing): by relative path first, then by file name when that name is unique."""
    caption = captions.get(source)
    if caption is None:
        caption = by_name.get(source.rsplit("/", 1)[-1])
    if caption:
        return caption, False
    return default, True


# ---------------------------------------------------------------------------------- one photo


def map_face(face, transform: np.ndarray, size: int):
    """The detected face in the coordinates of an affine crop (2x3 ``transform``) of side ``size``.

    x, y go through the transform; the mesh depth z is in pixel units, so it scales with the
    transform's scale.
    """
    transform = np.asarray(transform, dtype=np.float64)
    points = face.landmarks.astype(np.float64)
    xy = points[:, :2] @ transform[:, :2].T + transform[:, 2]
    scale = math.sqrt(abs(np.linalg.det(transform[:, :2])))
    landmarks = np.concatenate([xy, points[:, 2:3] * scale], axis=1).astype(np.float32)
    low = np.clip(xy.min(axis=0), 0, size)
    high = np.clip(xy.max(axis=0), 0, size)
    return DetectedFace(box=(float(low[0]), float(low[1]), float(high[0]), float(high[1])), score=face.score, landmarks=landmarks)


class PhotoProcessor:
    """One process's models, held by a :class:`~caphuman.session.CapHumanSession`, so every
    condition is made by the same code as at sampling.

    Args:
        config: model config (recogniser, embedding size, head prior, identity settings).
        weights_dir: folder with the weights files.
        image_size: stored side S.
        device: torch device for the models.
    """

    def __init__(self, config: CapHumanConfig, weights_dir: str | os.PathLike, image_size: int, device: str = "cpu"):
        self.image_size = image_size
        self.session = CapHumanSession(config, weights_dir, device)
        self.session.load_condition_models()  # a missing weights file stops the run here, not per photo
        self.device = self.session.device

    def process(self, path: Path, source: str, caption: str) -> FaceRecord:
        """One photo -> one record.

        Raises:
            PhotoSkip: the photo cannot be used (its ``kind`` says why).
        """
        session = self.session
        try:
            photo = session.load_photo(path)
        except InputImageError as error:
            raise PhotoSkip(UNREADABLE, str(error)) from None
        try:
            # The reference inputs come from the original photo, exactly as `caphuman sample`
            # makes them (its own detection of the largest face; more pixels than a small S).
            reference = session.reference_inputs(photo, face_index=0, source=source)
        except InputImageError as error:
            raise PhotoSkip(NO_FACE, str(error)) from None

        size = self.image_size
        target = aligned_square_crop(photo, reference.face, size=size)
        aligned_face = map_face(reference.face, target.transform, size)
        embedding = session.embed([reference.reference_face()])[0]
        mask = session.face_region(target.image, aligned_face, native_size=False)
        prior = session.head_prior
        try:
            if isinstance(prior, BuiltinHeadPrior):
                params = prior.reconstruct_from_landmarks(aligned_face.landmarks, target.image)
            else:
                params = prior.reconstruct(target.image)
        except InputImageError as error:
            raise PhotoSkip(NO_FACE, f"The {prior.name} head prior found no face in the aligned crop of {source} ({error}).") from None
        hint = session.hint(params, size, size)[0]
        return FaceRecord(
            key=record_key(source),
            image=target.image,
            clip_crop=reference.clip_input,
            face_embedding=embedding.detach().float().cpu().numpy(),
            face_mask=mask.astype(np.uint8),
            hint=hint.detach().cpu().numpy().astype(np.float16),
            head_params=head_params_to_arrays(params),
            caption=caption,
            source=source,
        )

    def close(self) -> None:
        self.session.close()


class PhotoSkip(Exception):
    """Internal: a photo cannot become a record (``kind`` is one of UNREADABLE, NO_FACE, FAILED)."""

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


@dataclass(frozen=True)
class _Task:
    path: str
    source: str
    caption: str
    caption_missing: bool


def _run_task(processor: PhotoProcessor, task: _Task) -> PhotoResult:
    start = time.perf_counter()
    result = PhotoResult(task.source, record_key(task.source), task.caption, task.caption_missing)
    try:
        record = processor.process(Path(task.path), task.source, task.caption)
        result.files = record.to_files()
    except PhotoSkip as skip:
        result.skipped = SkippedPhoto(task.source, skip.kind, skip.reason)
    except Exception as error:  # noqa: BLE001 - one odd photo must not end a run over thousands
        logger.exception("Unexpected error on %s; skipping it.", task.source)
        result.skipped = SkippedPhoto(task.source, FAILED, f"{type(error).__name__}: {error}")
    result.seconds = time.perf_counter() - start
    return result


# Per-process state of pool workers: mediapipe and dlib objects cannot be pickled, so each
# worker builds its own models once, in the initializer.
_WORKER_PROCESSOR: PhotoProcessor | None = None


def _init_worker(settings: PreprocessSettings) -> None:
    global _WORKER_PROCESSOR
    import cv2

    # N workers on N cores: one thread each, or torch/OpenCV thread pools oversubscribe the CPU.
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    logging.basicConfig(level=logging.WARNING)
    _WORKER_PROCESSOR = PhotoProcessor(settings.model_config(), settings.weights, settings.image_size, settings.device)


def _worker_task(task: _Task) -> PhotoResult:
    return _run_task(_WORKER_PROCESSOR, task)


# ---------------------------------------------------------------------------------- the run


def dataset_settings(settings: PreprocessSettings, config: CapHumanConfig, face_parser: str) -> dict:
    """What preprocess.yaml records: the request plus what it resolved to."""
    return {
        "format_version": DATASET_FORMAT_VERSION,
        "image_size": settings.image_size,
        "clip_size": CLIP_CROP_SIZE,
        "clip_crop": config.identity.clip_crop,
        "facenet_crop": config.identity.facenet_crop,
        "face_recognizer": config.model.face_recognizer,
        "face_embedding_dim": config.model.face_embedding_dim,
        "head_prior": config.model.head_prior,
        "face_parser": face_parser,
        "shard_size": settings.shard_size,
        "images": str(Path(settings.images).resolve()),
        "captions": str(Path(settings.captions).resolve()) if settings.captions else None,
        "config": str(settings.config) if settings.config else None,
        "weights": str(settings.weights),
        "default_caption": settings.default_caption,
    }


def read_dataset_settings(root: str | os.PathLike) -> dict | None:
    """preprocess.yaml of a dataset as a dict (None when absent)."""
    path = Path(root) / SETTINGS_FILE
    if not path.is_file():
        return None

    return OmegaConf.to_container(load_yaml_mapping(path, "dataset settings file"), resolve=True)


def _check_or_write_settings(out: Path, settings: dict) -> None:
    previous = read_dataset_settings(out)
    if previous is not None:
        previous = {**_SETTINGS_BEFORE_RECORDED, **previous}
        changed = [name for name in _RECORD_DEFINING_SETTINGS if previous.get(name) != settings.get(name)]
        if changed:
            details = ", ".join(f"{name} {previous.get(name)!r} -> {settings.get(name)!r}" for name in changed)
            raise ConfigError(f"Dataset '{out}' was made with other settings ({details}); use a new --out folder.")
    write_bytes_atomically(out / SETTINGS_FILE, OmegaConf.to_yaml(OmegaConf.create(settings)).encode("utf-8"))


def _read_report(out: Path) -> dict:
    path = out / REPORT_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        logger.warning("Ignoring an unreadable %s; previously skipped photos will be retried.", path)
        return {}


def _file_stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


class _Report:
    """report.json, kept current after every shard so an interrupted run leaves a true report."""

    def __init__(self, out: Path, sources: set[str]):
        self.path = out / REPORT_FILE
        previous = _read_report(out)
        # Photos that no longer exist drop out of the report.
        self.skipped: dict[str, SkippedPhoto] = {
            item["source"]: SkippedPhoto(**item) for item in previous.get("skipped", []) if item.get("source") in sources
        }
        self.missing_captions: set[str] = set(previous.get("missing_captions", []))

    def write(self, entries: list[IndexEntry], summary: PreprocessSummary) -> None:
        done = {entry.source for entry in entries}
        report = {
            "done": len(entries),
            "shards": len({entry.shard for entry in entries}),
            "skipped": [asdict(item) for _, item in sorted(self.skipped.items())],
            "missing_captions": sorted(self.missing_captions & done),
            "last_run": {**asdict(summary), "skipped": len(summary.skipped)},
        }
        write_bytes_atomically(self.path, (json.dumps(report, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


def preprocess_folder(
    settings: PreprocessSettings,
    progress: bool = True,
    stop_after: int | None = None,
    on_result: Callable[[PhotoResult], None] | None = None,
    part: Part = WHOLE,
) -> PreprocessSummary:
    """Turn every photo under ``settings.images`` into records under ``settings.out``.

    Args:
        settings: see :class:`PreprocessSettings`.
        progress: show a tqdm progress bar.
        stop_after: testing hook that simulates a crash: after this many records were written,
            stop at once, leaving the open shard uncommitted (its temporary file stays behind,
            as after a kill).
        on_result: called in this process with each photo's result (for progress reporting).
        part: only this part's photos, into ``out/parts/<part tag>`` (see the module docstring);
            photos already in ``out``'s own index are not processed again.
    Returns:
        The run's :class:`PreprocessSummary` (also written to report.json).
    Raises:
        CapHumanError: missing images folder/captions/weights, settings that differ from the
            existing dataset's, an --out folder that is not a caphuman dataset, or another
            process writing the same dataset (see :func:`claim_dataset_folder`).
    """
    with claim_dataset_folder(settings.out, part):
        return _preprocess_locked(settings, progress, stop_after, on_result, part)


def claim_dataset_folder(out: str | os.PathLike, part: Part = WHOLE) -> contextlib.ExitStack:
    """Own the dataset folder for this run (a context manager): a new or empty folder, or one
    of our datasets; anything else is refused, so photos are never mixed into another writer's
    shards and no foreign file is removed. A whole run holds the dataset's lock alone; the parts
    of a split run (torchrun ranks, --part jobs) share it and each holds its own part folder's
    lock alone, so a whole run or a merge cannot start while parts write, nor two runs of a part."""
    stack = contextlib.ExitStack()
    stack.enter_context(claim_dataset(out, shared=not part.whole))
    if not part.whole:
        stack.enter_context(claim_dataset(Path(out) / PARTS_DIR / part.tag))
    return stack


def _preprocess_locked(
    settings: PreprocessSettings,
    progress: bool = True,
    stop_after: int | None = None,
    on_result: Callable[[PhotoResult], None] | None = None,
    part: Part = WHOLE,
) -> PreprocessSummary:
    started = time.perf_counter()
    images, out = Path(settings.images), Path(settings.out)
    captions_path = Path(settings.captions) if settings.captions else None
    captions = load_captions(captions_path) if captions_path else {}
    names = [name.rsplit("/", 1)[-1] for name in captions]
    by_name = {name.rsplit("/", 1)[-1]: caption for name, caption in captions.items() if names.count(name.rsplit("/", 1)[-1]) == 1}
    exclude = [out] + ([captions_path] if captions_path else [])
    sources = list_photos(images, exclude)
    config = settings.model_config()
    merged_keys: set[str] = set()
    if not part.whole:
        sources = [source for source in sources if part.owns_name(source)]
        merged_keys = {entry.key for entry in read_index(out)}  # written by an earlier merge or whole run
        out = out / PARTS_DIR / part.tag

    out.mkdir(parents=True, exist_ok=True)
    writer = ShardWriter(out, settings.shard_size)  # repairs what an interrupted run left
    entries = read_index(out)
    done_keys = {entry.key for entry in entries} | merged_keys
    report = _Report(out, set(sources))
    summary = PreprocessSummary()

    tasks: list[_Task] = []
    for source in sources:
        if record_key(source) in done_keys:
            summary.already_done += 1
            continue
        path = images / source
        earlier = report.skipped.get(source)
        # Unreadable files and photos without a face stay so until the file changes; an
        # unexpected error (FAILED) may be a bug since fixed, so it is always retried.
        if earlier is not None and earlier.kind != FAILED and not settings.retry_failed and (earlier.size, earlier.mtime_ns) == _file_stamp(path):
            summary.previously_skipped += 1
            continue
        report.skipped.pop(source, None)
        caption, missing = caption_for(source, captions, by_name, settings.default_caption)
        tasks.append(_Task(str(path), source, caption, missing))
    logger.info(
        "%d photo(s) under %s: %d already in the dataset, %d skipped before (unchanged), %d to process.",
        len(sources),
        images,
        summary.already_done,
        summary.previously_skipped,
        len(tasks),
    )

    # Checked before any model loads, so a mismatched rerun fails in a second.
    parser_path = default_location("face_parsing", settings.weights)
    parser_choice = config.identity.face_parser
    if parser_choice == "auto":
        parser_choice = "bisenet" if parser_path.is_file() else "mesh"
    face_parser = "bisenet" if parser_choice == "bisenet" else "mesh_oval"
    if face_parser == "bisenet" and not parser_path.is_file():
        raise missing_weights("face_parsing", "BiSeNet face-parsing weights (identity.face_parser: bisenet)", parser_path)
    _check_or_write_settings(out, dataset_settings(settings, config, face_parser))
    processor: PhotoProcessor | None = None
    pool = None
    if tasks and settings.workers <= 1:
        processor = PhotoProcessor(config, settings.weights, settings.image_size, settings.device)

    results: Iterator[PhotoResult]
    if not tasks:
        results = iter(())
    elif processor is not None:
        results = (_run_task(processor, task) for task in tasks)
    else:
        # spawn, not fork: a forked child would inherit this process's torch/OpenMP thread pools
        # and any mediapipe graph, neither of which survives a fork reliably.
        pool = multiprocessing.get_context("spawn").Pool(settings.workers, initializer=_init_worker, initargs=(settings,))
        results = pool.imap_unordered(_worker_task, tasks, chunksize=1)

    photo_seconds = 0.0
    written = 0
    from tqdm import tqdm

    bar = tqdm(total=len(tasks), unit="photo", desc="preprocess", disable=not progress or not tasks)
    try:
        for result in results:
            bar.update(1)
            if on_result is not None:
                on_result(result)
            photo_seconds += result.seconds
            if result.skipped is not None:
                size, mtime_ns = _file_stamp(images / result.source)
                skipped = SkippedPhoto(result.source, result.skipped.kind, result.skipped.reason, size, mtime_ns)
                report.skipped[result.source] = skipped
                summary.skipped.append(skipped)
                logger.debug("Skipped %s: %s", result.source, skipped.reason)
                continue
            committed = writer.add(result.key, result.files, result.source, result.caption)
            summary.processed += 1
            written += 1
            if result.caption_missing:
                summary.missing_captions += 1
                report.missing_captions.add(result.source)
            if committed:
                entries.extend(committed)
                summary.records_in_dataset = len(entries)
                report.write(entries, summary)
            if stop_after is not None and written >= stop_after:
                logger.warning("Stopping after %d records (stop_after): the open shard is left uncommitted.", written)
                summary.interrupted = True
                writer.abandon(remove_file=False)
                break
        else:
            entries.extend(writer.commit())
    except BaseException:
        # Ctrl-C or an error in this process: keep the finished records (the writer discards the
        # open shard instead if the interruption hit the middle of a write).
        summary.interrupted = True
        entries.extend(writer.commit())
        raise
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()
        if processor is not None:
            processor.close()
        summary.records_in_dataset = len(entries)
        summary.seconds = time.perf_counter() - started
        attempted = summary.processed + len(summary.skipped)
        summary.seconds_per_photo = photo_seconds / attempted if attempted else 0.0
        report.write(entries, summary)

    _log_summary(summary, out)
    return summary


def merge_parts(out: str | os.PathLike) -> int:
    """Put the parts under ``out/parts`` together: one index.jsonl, report.json and preprocess.yaml.

    Entries already in ``out/index.jsonl`` stay first and as they are; each part's records are
    added once (by key), naming the part's shard files where they lie. Idempotent.

    Returns:
        The number of records in the merged dataset.
    Raises:
        CapHumanError: no parts, or parts made with differing settings, or parts still writing
            (the merge holds the dataset's lock alone).
    """
    with claim_dataset(out):
        return _merge_parts_locked(Path(out))


def _merge_parts_locked(out: Path) -> int:
    folders = sorted(path for path in (out / PARTS_DIR).glob("part-*-of-*") if path.is_dir()) if (out / PARTS_DIR).is_dir() else []
    if not folders:
        raise CapHumanError(f"No parts to merge under {out / PARTS_DIR}; run preprocess with --part i/N (or under torchrun) first.")
    settings = read_dataset_settings(out)
    for folder in folders:
        theirs = read_dataset_settings(folder)
        if theirs is None:
            continue  # a part that has not started: nothing of it to merge
        if settings is None:
            settings = theirs
        changed = [name for name in _RECORD_DEFINING_SETTINGS if settings.get(name) != theirs.get(name)]
        if changed:
            raise ConfigError(f"Part {folder} was made with other settings ({', '.join(changed)}) than the rest of {out}; remake it.")
    if settings is None:
        raise CapHumanError(f"No part under {out / PARTS_DIR} has started; nothing to merge.")

    entries = read_index(out)
    known = {entry.key for entry in entries}
    report = _read_report(out)
    skipped = {item["source"]: item for item in report.get("skipped", [])}
    missing_captions = set(report.get("missing_captions", []))
    for folder in folders:
        for entry in read_index(folder):
            if entry.key not in known:
                known.add(entry.key)
                shard = f"{PARTS_DIR}/{folder.name}/{entry.shard}"
                entries.append(IndexEntry(entry.key, shard, entry.source, entry.caption))
        theirs = _read_report(folder)
        skipped.update({item["source"]: item for item in theirs.get("skipped", [])})
        missing_captions.update(theirs.get("missing_captions", []))
    done = {entry.source for entry in entries}
    lines = "".join(json.dumps(asdict(entry), ensure_ascii=False) + "\n" for entry in entries)
    write_bytes_atomically(out / INDEX_FILE, lines.encode("utf-8"))
    write_bytes_atomically(out / SETTINGS_FILE, OmegaConf.to_yaml(OmegaConf.create(settings)).encode("utf-8"))
    merged = {
        "done": len(entries),
        "shards": len({entry.shard for entry in entries}),
        "skipped": [item for source, item in sorted(skipped.items()) if source not in done],
        "missing_captions": sorted(missing_captions & done),
        "parts": [folder.name for folder in folders],
    }
    write_bytes_atomically(out / REPORT_FILE, (json.dumps(merged, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
    logger.info("Merged %d part(s): %d record(s) in %s (%d photo(s) skipped).", len(folders), len(entries), out, len(merged["skipped"]))
    return len(entries)


def _log_summary(summary: PreprocessSummary, out: Path) -> None:
    logger.info(
        "Processed %d photo(s) in %.1f s (%.2f s per photo in its worker); %d already done; %d record(s) in %s.",
        summary.processed,
        summary.seconds,
        summary.seconds_per_photo,
        summary.already_done,
        summary.records_in_dataset,
        out,
    )
    if summary.missing_captions:
        logger.info("%d photo(s) had no caption and got the default one (listed in %s).", summary.missing_captions, out / REPORT_FILE)
    if summary.skipped:
        lines = "\n".join(f"  {item.source}: [{item.kind}] {item.reason}" for item in summary.skipped)
        logger.warning("Skipped %d photo(s) (also in %s):\n%s", len(summary.skipped), out / REPORT_FILE, lines)
