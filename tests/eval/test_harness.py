"""`caphuman eval` end to end, offline: tiny config + smoke benchmark, report files, resume, hooks.

Identities are two real portraits: skimage's astronaut and matplotlib's grace_hopper sample.
With the tiny (random) model no faces appear in the generated images, so the face metrics of the
three built-in methods are n/a; a second run uses hook methods whose output is known (renders of
the requested head, the reference photo itself) to check the scores the harness writes.
"""

from __future__ import annotations

import csv
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from matplotlib import cbook
from PIL import Image

from caphuman.cli import main
from caphuman.eval.methods import METHODS, register_method
from caphuman.eval.report import PAPER_ROW_LABEL, TABLE_COLUMNS
from caphuman.eval.scoring import SCORE_COLUMNS

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "configs" / "tiny.yaml")
SMOKE = str(ROOT / "configs" / "benchmarks" / "smoke.yaml")
BUILTIN_METHODS = ("caphuman", "text-only", "caphuman-no-head")
# 2 identities x 2 prompts x 2 conditions x 1 seed
IMAGES_PER_METHOD = 8


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # The tiny model's operations are so small that a second thread only adds contention.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def identities(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("identities")
    Image.fromarray(skimage.data.astronaut()).save(folder / "astronaut.png")
    shutil.copy(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False), folder / "grace_hopper.jpg")
    return folder


def run_eval(identities: Path, out: Path, *extra: str) -> int:
    return main(["eval", "--benchmark", SMOKE, "--config", TINY, "--identities", str(identities), "--out", str(out), "--device", "cpu", *extra])


@pytest.fixture(scope="module")
def smoke_run(identities, tmp_path_factory) -> tuple[Path, float]:
    out = tmp_path_factory.mktemp("run") / "smoke"
    start = time.perf_counter()
    assert run_eval(identities, out, "--method", "all") == 0
    return out, time.perf_counter() - start


def read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with path.open(newline="", encoding="utf-8") as stream:
        reader = csv.DictReader(stream)
        return list(reader.fieldnames), list(reader)


def test_smoke_run_writes_every_image_and_parsable_reports(smoke_run) -> None:
    out, seconds = smoke_run
    for method in BUILTIN_METHODS:
        images = sorted((out / "images" / method).rglob("*.png"))
        assert len(images) == IMAGES_PER_METHOD
        assert Image.open(images[0]).size == (64, 64)
    assert not list(out.rglob("*.tmp")), "a temporary file was left behind"

    columns, rows = read_csv(out / "report" / "per_image.csv")
    assert tuple(columns) == SCORE_COLUMNS
    assert len(rows) == 3 * IMAGES_PER_METHOD
    assert {r["method"] for r in rows} == set(BUILTIN_METHODS)
    assert {r["condition"] for r in rows} == {"yaw-20_pitch+0", "yaw+20_pitch+0"}
    assert {float(r["requested_yaw"]) for r in rows} == {-20.0, 20.0}
    for row in rows:
        float(row["id_similarity"]), float(row["pose_error_deg"])  # numbers or nan, never blank
        assert (out / row["path"]).is_file()

    _, summary = read_csv(out / "report" / "summary.csv")
    assert [r["method"] for r in summary] == list(BUILTIN_METHODS)
    assert all(int(r["images"]) == IMAGES_PER_METHOD for r in summary)
    assert all(0.0 <= float(r["detection_rate"]) <= 1.0 for r in summary)
    _, per_condition = read_csv(out / "report" / "per_condition.csv")
    assert len(per_condition) == 3 * 2

    table = (out / "report" / "table.md").read_text(encoding="utf-8").splitlines()
    table_rows = [line for line in table if line.startswith("| ") and not line.startswith("| method")]
    assert [line.split("|")[1].strip() for line in table_rows] == [*BUILTIN_METHODS, PAPER_ROW_LABEL]
    assert all(len(line.strip("|").split("|")) == 1 + len(TABLE_COLUMNS) for line in table_rows)
    paper = table_rows[-1]
    for number in ("0.8429", "0.1132", "0.0564", "0.1349", "0.1047"):
        assert number in paper
    assert any("dlib" in line for line in table)  # says which recogniser scored identity
    assert any("CLIP-T and prompt accuracy skipped" in line for line in table)

    pictures = ["pose_error_by_condition.png", "identity_vs_yaw.png", "grids/astronaut.png", "grids/grace_hopper.png"]
    for name in pictures:
        with Image.open(out / "report" / name) as picture:
            picture.load()
            assert picture.size[0] > 100 and picture.size[1] > 100

    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["methods"]) == set(BUILTIN_METHODS)
    assert manifest["methods"]["caphuman"]["settings"]["config"]["sampling"]["num_inference_steps"] == 4
    assert manifest["conditions"]["yaw+20_pitch+0"]["yaw"] == 20.0
    assert seconds < 180.0


def test_rerun_generates_and_scores_nothing_then_only_what_is_missing(smoke_run, identities) -> None:
    out, _ = smoke_run
    images = sorted((out / "images").rglob("*.png"))
    stamps = {path: path.stat().st_mtime_ns for path in images}
    assert run_eval(identities, out, "--method", "all") == 0
    last = json.loads((out / "last_run.json").read_text())
    assert [g["generated"] for g in last["generation"]] == [0, 0, 0]
    assert [g["skipped"] for g in last["generation"]] == [IMAGES_PER_METHOD] * 3
    assert set(last["scored_now"].values()) == {0}
    assert {path: path.stat().st_mtime_ns for path in images} == stamps

    removed = next(p for p in images if "text-only" in str(p))
    removed.unlink()
    assert run_eval(identities, out, "--method", "text-only") == 0
    last = json.loads((out / "last_run.json").read_text())
    assert last["generation"] == [{**last["generation"][0], "generated": 1, "skipped": IMAGES_PER_METHOD - 1}]
    assert last["scored_now"] == {"text-only": 1}
    assert removed.is_file()


def test_rerun_with_other_settings_is_refused(smoke_run, identities, capsys) -> None:
    out, _ = smoke_run
    assert run_eval(identities, out, "--method", "caphuman", "--steps", "2") == 2


def test_hook_methods_are_scored_against_known_answers(identities, tmp_path) -> None:
    from caphuman.head.renderer import MeshRenderer

    renderer = MeshRenderer(512)

    def render_requested_head(request, context):
        """The requested head itself, rendered over grey (what a perfect head branch would give)."""
        params = context.requested_head(request.identity, request.condition).clone()
        params.camera[:, 1:] = torch.tensor([0.0, 0.05])
        output = renderer.render_mesh(context.head_prior.mesh(params))
        image = output.shaded[0] * output.mask[0] + 0.5 * (1.0 - output.mask[0])
        pixels = (image.permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
        return [Image.fromarray(pixels) for _ in request.seeds]

    def copy_reference(request, context):
        """The reference photo itself."""
        return [Image.fromarray(context.identity(request.identity).image) for _ in request.seeds]

    register_method("test-render")(render_requested_head)
    register_method("test-reference")(copy_reference)
    try:
        out = tmp_path / "hooks"
        assert run_eval(identities, out, "--method", "test-render,test-reference") == 0
    finally:
        METHODS.pop("test-render")
        METHODS.pop("test-reference")
    _, rows = read_csv(out / "report" / "per_image.csv")
    renders = [r for r in rows if r["method"] == "test-render"]
    copies = [r for r in rows if r["method"] == "test-reference"]
    assert len(renders) == len(copies) == IMAGES_PER_METHOD
    assert all(r["face_detected"] == "1" for r in rows)
    # Renders at the requested pose: the re-estimated pose is close (render round trip ~6 deg/axis).
    assert max(float(r["pose_error_deg"]) for r in renders) < 10.0
    assert all(np.sign(float(r["estimated_yaw"])) == np.sign(float(r["requested_yaw"])) for r in renders)
    # The reference photo scored against itself: similarity 1 and the head's own coefficients.
    for row in copies:
        assert float(row["id_similarity"]) == pytest.approx(1.0, abs=1e-6)
        for group in ("shape_rmse", "expression_rmse", "lighting_rmse"):
            assert float(row[group]) == pytest.approx(0.0, abs=1e-6)
        # its pose is the photo's (near frontal), not the requested +-20 degrees yaw
        assert float(row["pose_error_deg"]) > 12.0
