"""`caphuman preprocess`: bad files reported, resumable without repeated work, records round-trip.

The photos are real faces made from skimage's astronaut (crop, flip, rotation, rescale) and
matplotlib's grace_hopper.jpg, plus a truncated JPEG, a text file and a photo without a face
(skimage's coffee). The tiny config (stand-in recogniser) and the built-in head prior at 128 px
keep it to a few seconds per run.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from caphuman.data.preprocess import NO_FACE, UNREADABLE, PreprocessSettings, preprocess_folder
from caphuman.data.records import RECORD_SUFFIXES, FaceRecord, head_params_from_arrays, head_params_to_arrays, record_key
from caphuman.data.shards import INDEX_FILE, ShardReader, ShardWriter, read_index
from caphuman.head.params import HeadParams

REPO = Path(__file__).resolve().parents[2]
TINY_CONFIG = str(REPO / "configs" / "tiny.yaml")
IMAGE_SIZE = 128
FACE_PHOTOS = ("astronaut.png", "crop.jpg", "flip.jpg", "grace.jpg", "sub/rotated.jpg")
BAD_PHOTOS = {"broken.jpg": UNREADABLE, "notes.txt": UNREADABLE, "coffee.jpg": NO_FACE}


def make_photos(folder: Path) -> None:
    import matplotlib.cbook
    from skimage import data, transform

    astronaut = data.astronaut()
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(astronaut).save(folder / "astronaut.png")
    Image.fromarray(astronaut[10:330, 70:390]).save(folder / "crop.jpg", quality=92)
    Image.fromarray(np.ascontiguousarray(astronaut[:, ::-1])).save(folder / "flip.jpg", quality=92)
    rotated = transform.rotate(transform.rescale(astronaut, 0.7, channel_axis=2), 15, mode="edge")
    Image.fromarray((rotated * 255).astype(np.uint8)).save(folder / "sub" / "rotated.jpg", quality=92)
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as stream:
        (folder / "grace.jpg").write_bytes(stream.read())
    Image.fromarray(data.coffee()).save(folder / "coffee.jpg")
    (folder / "broken.jpg").write_bytes((folder / "flip.jpg").read_bytes()[:500])
    (folder / "notes.txt").write_text("not a photo\n")


def settings(images: Path, out: Path, **overrides) -> PreprocessSettings:
    values = dict(
        images=str(images),
        out=str(out),
        config=TINY_CONFIG,
        weights=str(out.parent / "no-weights"),
        image_size=IMAGE_SIZE,
        shard_size=2,
        head_prior="builtin",
    )
    values.update(overrides)
    return PreprocessSettings(**values)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An interrupted first run, a resuming run, and a third run that should find nothing to do.

    The first run stops after 3 records (a simulated kill): with 2 records per shard, one shard is
    committed and the third record sits in an uncommitted temporary shard.
    """
    root = tmp_path_factory.mktemp("preprocess")
    images, out = root / "photos", root / "dataset"
    make_photos(images)
    captions = root / "captions.jsonl"
    captions.write_text(json.dumps({"file": "grace.jpg", "caption": "a photo of grace hopper"}) + "\n")
    seen: list[list[str]] = [[], [], []]
    first = preprocess_folder(
        settings(images, out, captions=str(captions)), progress=False, stop_after=3, on_result=lambda result: seen[0].append(result.source)
    )
    after_first = read_index(out)
    leftovers = sorted(path.name for path in (out / "shards").iterdir())
    second = preprocess_folder(settings(images, out, captions=str(captions)), progress=False, on_result=lambda result: seen[1].append(result.source))
    index_after_second = (out / INDEX_FILE).read_text()
    third = preprocess_folder(settings(images, out, captions=str(captions)), progress=False, on_result=lambda result: seen[2].append(result.source))
    return dict(
        images=images,
        out=out,
        first=first,
        second=second,
        third=third,
        seen=seen,
        after_first=after_first,
        leftovers=leftovers,
        index_after_second=index_after_second,
    )


def test_interrupted_run_leaves_only_committed_records(runs):
    assert runs["first"].interrupted
    assert len(runs["after_first"]) == 2  # one complete shard; the third record was not committed
    assert any(name.startswith(".tmp-") for name in runs["leftovers"])  # what a kill leaves behind


def test_bad_files_are_reported_by_name_and_reason(runs):
    report = json.loads((runs["out"] / "report.json").read_text())
    skipped = {item["source"]: item for item in report["skipped"]}
    assert {source: item["kind"] for source, item in skipped.items()} == BAD_PHOTOS
    assert "truncated or corrupt" in skipped["broken.jpg"]["reason"]
    assert "not an image" in skipped["notes.txt"]["reason"]
    assert "No face" in skipped["coffee.jpg"]["reason"]
    assert report["done"] == len(FACE_PHOTOS)


def test_resume_completes_without_duplicates_or_repeated_work(runs):
    entries = read_index(runs["out"])
    keys = [entry.key for entry in entries]
    assert len(keys) == len(set(keys)) == len(FACE_PHOTOS)
    assert sorted(entry.source for entry in entries) == sorted(FACE_PHOTOS)
    committed_first = {entry.source for entry in runs["after_first"]}
    # The resuming run processed exactly the photos that were not committed, each once, and did
    # not retry the bad files the first run had already judged.
    first_judged_bad = {source for source in runs["seen"][0] if source in BAD_PHOTOS}
    assert sorted(runs["seen"][1]) == sorted(set(FACE_PHOTOS) - committed_first | set(BAD_PHOTOS) - first_judged_bad)
    assert runs["second"].processed == len(FACE_PHOTOS) - len(committed_first)
    assert runs["second"].already_done == len(committed_first)
    assert not any(path.name.startswith(".tmp-") for path in (runs["out"] / "shards").iterdir())


def test_rerun_does_no_work(runs):
    third = runs["third"]
    assert runs["seen"][2] == []
    assert (third.processed, third.already_done, third.previously_skipped) == (0, len(FACE_PHOTOS), len(BAD_PHOTOS))
    assert (runs["out"] / INDEX_FILE).read_text() == runs["index_after_second"]
    report = json.loads((runs["out"] / "report.json").read_text())
    assert {item["source"] for item in report["skipped"]} == set(BAD_PHOTOS)


def test_records_hold_the_documented_content(runs):
    out = runs["out"]
    by_source = {entry.source: entry for entry in read_index(out)}
    assert by_source["grace.jpg"].caption == "a photo of grace hopper"
    assert by_source["astronaut.png"].caption == "a photo of a person"
    report = json.loads((out / "report.json").read_text())
    assert sorted(report["missing_captions"]) == sorted(set(FACE_PHOTOS) - {"grace.jpg"})
    entry = by_source["astronaut.png"]
    with ShardReader(out / entry.shard) as reader:
        record = reader.read(entry.key)
    assert record.key == record_key("astronaut.png") and record.source == "astronaut.png"
    assert record.image.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and record.hint.shape == (9, IMAGE_SIZE, IMAGE_SIZE)
    assert record.face_embedding.shape == (512,)  # the tiny config's embedding size
    assert abs(np.linalg.norm(record.face_embedding) - 1.0) < 1e-4  # recognisers L2-normalise
    # The aligned crop frames the face in the middle: the mask and the rendered head cover the
    # centre and not the corners, and they overlap (hint and target are in the same pixels).
    head = np.abs(record.hint.astype(np.float32)).sum(axis=0) > 0
    centre = slice(IMAGE_SIZE // 2 - 8, IMAGE_SIZE // 2 + 8)
    assert record.face_mask[centre, centre].all() and head[centre, centre].all()
    assert record.face_mask[:8, :8].sum() == 0 and not head[:8, :8].any()
    overlap = (head & (record.face_mask > 0)).sum() / max(record.face_mask.sum(), 1)
    assert overlap > 0.8
    # The CLIP input (identity.clip_crop: official) is the whole 512 px photo at 224 px, non-face
    # white: the astronaut's face (about x 181-268, y 62-172 in the photo) is at x 79-117,
    # y 27-75 there; its centre is not white, the corners and the photo's lower half are.
    assert record.clip_crop.shape == (224, 224, 3)
    assert (record.clip_crop[0, 0] == 255).all() and record.clip_crop[51, 98].mean() < 250
    assert (record.clip_crop[150:] == 255).all()
    assert str(record.head_params["backend"]) == "builtin"
    assert float(np.abs(record.head_params["rotation"]).max()) < 25  # a near-frontal portrait


def test_cli_exit_codes(runs, tmp_path):
    from caphuman.cli import main

    assert (
        main(
            [
                "preprocess",
                "--images",
                str(runs["images"]),
                "--out",
                str(runs["out"]),
                "--config",
                TINY_CONFIG,
                "--image-size",
                str(IMAGE_SIZE),
                "--shard-size",
                "2",
                "--weights",
                str(tmp_path),
                "--no-progress",
            ]
        )
        == 0
    )
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    (only_bad / "notes.txt").write_text("no photo here")
    assert (
        main(
            [
                "preprocess",
                "--images",
                str(only_bad),
                "--out",
                str(tmp_path / "ds"),
                "--config",
                TINY_CONFIG,
                "--image-size",
                str(IMAGE_SIZE),
                "--weights",
                str(tmp_path),
                "--no-progress",
            ]
        )
        == 2
    )
    # A rerun with other record-defining settings is refused rather than mixing two formats.
    assert (
        main(
            [
                "preprocess",
                "--images",
                str(runs["images"]),
                "--out",
                str(runs["out"]),
                "--config",
                TINY_CONFIG,
                "--image-size",
                "64",
                "--weights",
                str(tmp_path),
                "--no-progress",
            ]
        )
        == 2
    )


def random_record(key: str, size: int = 16, seed: int = 0) -> FaceRecord:
    rng = np.random.default_rng(seed)
    return FaceRecord(
        key=key,
        image=rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
        clip_crop=rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
        face_embedding=rng.standard_normal(8).astype(np.float32),
        face_mask=rng.integers(0, 2, (size, size), dtype=np.uint8),
        hint=rng.standard_normal((9, size, size)).astype(np.float16),
        head_params={
            "shape": rng.standard_normal(5).astype(np.float32),
            "expression": rng.standard_normal(3).astype(np.float32),
            "jaw": np.zeros(3, np.float32),
            "rotation": np.array([10.0, -5.0, 2.0], np.float32),
            "camera": np.array([0.8, 0.1, -0.1], np.float32),
            "albedo": rng.random((7, 3)).astype(np.float32),
            "lighting": rng.standard_normal((9, 3)).astype(np.float32),
            "backend": np.array("builtin"),
        },
        caption="a photo of a person, ünïcode",
        source="dir/photo.jpg",
    )


def assert_records_equal(a: FaceRecord, b: FaceRecord) -> None:
    for name in ("image", "clip_crop", "face_embedding", "face_mask", "hint"):
        assert getattr(a, name).dtype == getattr(b, name).dtype
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.head_params.keys() == b.head_params.keys()
    for name in a.head_params:
        np.testing.assert_array_equal(a.head_params[name], b.head_params[name])
    assert (a.key, a.caption, a.source) == (b.key, b.caption, b.source)


def test_record_round_trips_through_a_shard(tmp_path):
    records = [random_record(record_key(f"photo{i}.jpg"), seed=i) for i in range(3)]
    writer = ShardWriter(tmp_path, shard_size=2)
    for record in records:
        writer.add_record(record)
    writer.commit()
    entries = read_index(tmp_path)
    assert [entry.shard for entry in entries] == ["shards/shard-000000.tar"] * 2 + ["shards/shard-000001.tar"]
    for record, entry in zip(records, entries, strict=True):
        with ShardReader(tmp_path / entry.shard) as reader:
            assert_records_equal(reader.read(entry.key), record)
    # The webdataset layout: plain tar members "<key>.<suffix>", a record's members together.
    with tarfile.open(tmp_path / entries[0].shard) as tar:
        names = tar.getnames()
    assert names == [f"{record.key}.{suffix}" for record in records[:2] for suffix in RECORD_SUFFIXES]


def test_head_params_round_trip():
    params = HeadParams(
        shape=torch.randn(2, 5),
        expression=torch.randn(2, 3),
        jaw=torch.randn(2, 3),
        rotation=torch.randn(2, 3),
        camera=torch.randn(2, 3),
        albedo=torch.rand(2, 7, 3),
        lighting=torch.randn(2, 9, 3),
        backend="builtin",
    )
    back = head_params_from_arrays(head_params_to_arrays(params, index=1))
    assert back.backend == "builtin" and back.albedo.shape == (1, 7, 3)
    torch.testing.assert_close(back.rotation, params.rotation[1:2])
    torch.testing.assert_close(back.albedo, params.albedo[1:2])


def test_torn_index_line_is_ignored_and_repaired(tmp_path):
    writer = ShardWriter(tmp_path, shard_size=1)
    writer.add_record(random_record("a" * 40))
    index = tmp_path / INDEX_FILE
    good = index.read_text()
    with open(index, "a") as stream:
        stream.write('{"key": "bbbb", "shard": "shards/sh')  # a crash in the middle of an append
    assert [entry.key for entry in read_index(tmp_path)] == ["a" * 40]
    ShardWriter(tmp_path, shard_size=1)  # a new run repairs the dataset folder
    assert index.read_text() == good


@pytest.mark.slow
def test_parallel_workers_make_the_same_records(runs, tmp_path):
    """--workers 2 (spawned processes, each with its own models) gives the sequential run's records."""
    out = tmp_path / "parallel"
    summary = preprocess_folder(settings(runs["images"], out, workers=2), progress=False)
    assert summary.processed == len(FACE_PHOTOS) and {item.source for item in summary.skipped} == set(BAD_PHOTOS)
    sequential = {entry.key: entry for entry in read_index(runs["out"])}
    for entry in read_index(out):
        with ShardReader(out / entry.shard) as reader, ShardReader(runs["out"] / sequential[entry.key].shard) as other:
            a, b = reader.read(entry.key), other.read(entry.key)
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.face_mask, b.face_mask)
        np.testing.assert_allclose(a.face_embedding, b.face_embedding, atol=1e-5)
        # One thread per worker vs two in the test process: float sums in another order.
        np.testing.assert_allclose(a.hint.astype(np.float32), b.hint.astype(np.float32), atol=5e-3)


def assert_same_records(out: Path, reference: Path) -> None:
    """The datasets hold the same keys, and each record's content matches (tolerances: see above)."""
    entries, expected = read_index(out), {entry.key: entry for entry in read_index(reference)}
    assert sorted(entry.key for entry in entries) == sorted(expected)
    for entry in entries:
        assert (entry.source, entry.caption) == (expected[entry.key].source, expected[entry.key].caption)
        with ShardReader(out / entry.shard) as reader, ShardReader(reference / expected[entry.key].shard) as other:
            a, b = reader.read(entry.key), other.read(entry.key)
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.face_mask, b.face_mask)
        np.testing.assert_allclose(a.face_embedding, b.face_embedding, atol=1e-5)
        np.testing.assert_allclose(a.hint.astype(np.float32), b.hint.astype(np.float32), atol=5e-3)


def test_parts_then_merge_make_the_records_of_one_run(runs, tmp_path):
    """--part 0/2 and 1/2 (one of them killed and rerun), then --merge: the sequential run's dataset."""
    from caphuman.cli import main
    from caphuman.data.preprocess import PARTS_DIR, merge_parts
    from caphuman.parallel import Part

    out = tmp_path / "split"
    captions = runs["images"].parent / "captions.jsonl"
    split = settings(runs["images"], out, captions=str(captions))
    seen: dict[int, list[str]] = {0: [], 1: []}
    killed = preprocess_folder(split, progress=False, stop_after=1, part=Part(1, 2), on_result=lambda result: seen[1].append(result.source))
    assert killed.interrupted
    assert not (out / INDEX_FILE).exists(), "a part writes only under parts/"
    for index in (0, 1):
        preprocess_folder(split, progress=False, part=Part(index, 2), on_result=lambda result, i=index: seen[i].append(result.source))
    assert not set(seen[0]) & set(seen[1]), "the parts share no photo"
    assert set(seen[0]) | set(seen[1]) == set(FACE_PHOTOS) | set(BAD_PHOTOS)
    assert len(seen[0]) == len(set(seen[0])) and seen[0], "part 0 did each of its photos once"
    assert merge_parts(out) == len(FACE_PHOTOS)
    assert_same_records(out, runs["out"])
    assert all(entry.shard.startswith(f"{PARTS_DIR}/part-00") for entry in read_index(out))
    report = json.loads((out / "report.json").read_text())
    assert {item["source"]: item["kind"] for item in report["skipped"]} == BAD_PHOTOS
    assert report["missing_captions"] == sorted(set(FACE_PHOTOS) - {"grace.jpg"})

    index = (out / INDEX_FILE).read_text()
    assert merge_parts(out) == len(FACE_PHOTOS) and (out / INDEX_FILE).read_text() == index  # idempotent
    # A rerun of a part after the merge finds nothing to do; a whole run finds nothing either.
    assert preprocess_folder(split, progress=False, part=Part(0, 2)).processed == 0
    assert preprocess_folder(split, progress=False).processed == 0
    args = ["preprocess", "--images", str(runs["images"]), "--out", str(out), "--config", TINY_CONFIG]
    assert main([*args, "--merge"]) == 0 and (out / INDEX_FILE).read_text() == index
    assert main([*args, "--merge", "--part", "0/2"]) == 2
    assert main([*args, "--part", "2/2"]) == 2
    assert main(["preprocess", "--images", str(runs["images"]), "--out", str(tmp_path / "empty"), "--merge"]) == 2


@pytest.mark.slow
def test_torchrun_ranks_make_the_records_of_one_run(runs, tmp_path):
    """torchrun with 2 CPU processes: each rank its share, rank 0 merges after a gloo barrier."""
    import os
    import subprocess
    import sys

    out = tmp_path / "ranks"
    captions = runs["images"].parent / "captions.jsonl"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "caphuman.cli",
        "preprocess",
        "--images",
        str(runs["images"]),
        "--out",
        str(out),
        "--captions",
        str(captions),
        "--config",
        TINY_CONFIG,
        "--weights",
        str(out.parent / "no-weights"),
        "--image-size",
        str(IMAGE_SIZE),
        "--shard-size",
        "2",
        "--head-prior",
        "builtin",
        "--no-progress",
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(path.name for path in (out / "parts").iterdir()) == ["part-000-of-002", "part-001-of-002"]
    assert_same_records(out, runs["out"])
    report = json.loads((out / "report.json").read_text())
    assert {item["source"]: item["kind"] for item in report["skipped"]} == BAD_PHOTOS
