"""Reports of a scored run: CSVs, a markdown table in the paper's layout, plots and sample grids.

Files written under RUN/report/:
- per_image.csv: one row per generated image (columns: :data:`caphuman.eval.scoring.SCORE_COLUMNS`);
- summary.csv: one row per method (the table's numbers, plus counts);
- per_condition.csv: one row per (method, head condition);
- table.md: methods as rows, the metrics as columns, and the paper's published CapHuman numbers
  on their own row (labelled "paper, to be re-checked"), with notes saying which recogniser,
  CLIP model and head prior produced the columns;
- pose_error_by_condition.png, identity_vs_yaw.png: matplotlib plots;
- grids/<identity>.png: the reference photo, then one image per head condition, one row per
  method (first prompt, first seed).

Means: identity similarity, head RMSEs and pose error average over images with a detected face;
CLIP-T and prompt accuracy over all images; diversity over (identity, prompt, condition) groups
with at least two detected faces. A column with nothing to average reads "n/a".
"""

from __future__ import annotations

import csv
import logging
import math
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from caphuman.eval.benchmark import BenchmarkSpec, Identity
from caphuman.eval.runner import image_path
from caphuman.eval.scoring import SCORE_COLUMNS, ImageScore
from caphuman.outputs import atomic_path, write_text_atomically

logger = logging.getLogger(__name__)

REPORT_DIR = "report"

# (column key, markdown header, format). Arrows: higher or lower is better.
TABLE_COLUMNS = (
    ("id_similarity", "ID sim ↑", "{:.4f}"),
    ("clip_t", "CLIP-T ↑", "{:.2f}"),
    ("prompt_accuracy", "prompt acc ↑", "{:.3f}"),
    ("shape_rmse", "shape RMSE ↓", "{:.4f}"),
    ("pose_rmse", "pose RMSE ↓", "{:.4f}"),
    ("expression_rmse", "expression RMSE ↓", "{:.4f}"),
    ("lighting_rmse", "light RMSE ↓", "{:.4f}"),
    ("pose_error_deg", "pose error (deg) ↓", "{:.2f}"),
    ("detection_rate", "detection rate ↑", "{:.3f}"),
    ("diversity", "diversity", "{:.4f}"),
)

# CapHuman's numbers on HumanIPHC as published (from the project's design notes; to be
# re-checked against the paper's table). DECA/FLAME coefficients, FaceNet cosine.
PAPER_CAPHUMAN = {
    "id_similarity": 0.8429,
    "shape_rmse": 0.1132,
    "pose_rmse": 0.0564,
    "expression_rmse": 0.1349,
    "lighting_rmse": 0.1047,
}
PAPER_ROW_LABEL = "CapHuman (paper, to be re-checked)"

SUMMARY_COLUMNS = ("method", "images", "faces") + tuple(key for key, _, _ in TABLE_COLUMNS)
CONDITION_COLUMNS = ("method", "condition", "requested_yaw", "requested_pitch", "requested_roll") + SUMMARY_COLUMNS[1:]


@dataclass
class ReportNotes:
    """Facts the table states under itself."""

    benchmark: str
    identities: int
    identity_model: str
    clip: str
    head_prior: str
    model_config: str


def _mean(values) -> float:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def summarise(rows: list[ImageScore]) -> dict:
    """The table's numbers for a group of image rows (see the module docstring for what each averages)."""
    detected = [r for r in rows if r.face_detected]
    groups = {}
    for r in rows:
        groups.setdefault((r.method, r.identity, r.prompt_id, r.condition), r.diversity)
    return {
        "images": len(rows),
        "faces": len(detected),
        "id_similarity": _mean(r.id_similarity for r in detected),
        "clip_t": _mean(r.clip_t for r in rows),
        "prompt_accuracy": _mean(r.prompt_correct for r in rows),
        "shape_rmse": _mean(r.shape_rmse for r in detected),
        "pose_rmse": _mean(r.pose_rmse for r in detected),
        "expression_rmse": _mean(r.expression_rmse for r in detected),
        "lighting_rmse": _mean(r.lighting_rmse for r in detected),
        "pose_error_deg": _mean(r.pose_error_deg for r in detected),
        "detection_rate": len(detected) / len(rows) if rows else math.nan,
        "diversity": _mean(groups.values()),
    }


def method_summaries(rows: list[ImageScore], methods: list[str]) -> list[dict]:
    return [{"method": m, **summarise([r for r in rows if r.method == m])} for m in methods]


def condition_summaries(rows: list[ImageScore], methods: list[str], spec: BenchmarkSpec) -> list[dict]:
    out = []
    for method in methods:
        for condition in spec.conditions:
            group = [r for r in rows if r.method == method and r.condition == condition.name]
            if not group:
                continue
            angles = {k: _mean(getattr(r, k) for r in group) for k in ("requested_yaw", "requested_pitch", "requested_roll")}
            out.append({"method": method, "condition": condition.name, **angles, **summarise(group)})
    return out


def _cell(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(round(value, 6))
    return str(value)


def write_csv(path: Path, columns: tuple[str, ...], records: list[dict]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(columns)
        for record in records:
            writer.writerow([_cell(record[c]) for c in columns])


def markdown_table(summaries: list[dict], notes: ReportNotes) -> str:
    """The paper-layout table: one row per method, the paper's CapHuman row last."""

    def fmt(value, pattern: str) -> str:
        return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else pattern.format(value)

    header = "| method | " + " | ".join(title for _, title, _ in TABLE_COLUMNS) + " |"
    lines = [f"# {notes.benchmark}", "", header, "|" + "---|" * (len(TABLE_COLUMNS) + 1)]
    for summary in summaries:
        lines.append(f"| {summary['method']} | " + " | ".join(fmt(summary[key], pattern) for key, _, pattern in TABLE_COLUMNS) + " |")
    lines.append(
        f"| {PAPER_ROW_LABEL} | "
        + " | ".join(fmt(PAPER_CAPHUMAN[key], pattern) if key in PAPER_CAPHUMAN else "—" for key, _, pattern in TABLE_COLUMNS)
        + " |"
    )
    lines += [
        "",
        f"- identities: {notes.identities}; images per method: {summaries[0]['images'] if summaries else 0}; model config: {notes.model_config}",
        f"- ID sim: {notes.identity_model} between the reference face and the largest generated face (mean over images with a face).",
        f"- {notes.clip}",
        f"- Head RMSEs: coefficients re-estimated with the '{notes.head_prior}' head prior vs the requested ones "
        "(shape; pose = yaw/pitch/roll in radians; expression = expression + jaw; light = 27 SH values). "
        "Units depend on the prior: only the 'deca' prior is comparable with the paper's DECA numbers.",
        "- pose error: geodesic angle between requested and re-estimated head rotation. "
        "diversity: mean 1 - cosine between the faces of one condition's seeds.",
        "- The paper's row is CapHuman as published on HumanIPHC (FaceNet, DECA); its prompts differ from this benchmark's.",
        "",
    ]
    return "\n".join(lines)


def plot_pose_error(path: Path, conditions: list[dict], methods: list[str], spec: BenchmarkSpec) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(max(6.0, 0.9 * len(spec.conditions) * max(1, len(methods)) ** 0.5), 4.0), tight_layout=True)
    axes = figure.add_subplot()
    names = [c.name for c in spec.conditions]
    width = 0.8 / max(1, len(methods))
    for index, method in enumerate(methods):
        lookup = {c["condition"]: c["pose_error_deg"] for c in conditions if c["method"] == method}
        values = [lookup.get(name, math.nan) for name in names]
        axes.bar(np.arange(len(names)) + (index - (len(methods) - 1) / 2) * width, np.nan_to_num(values, nan=0.0), width, label=method)
    axes.set_xticks(np.arange(len(names)), names, rotation=45, ha="right", fontsize=8)
    axes.set_ylabel("head-pose error (degrees)")
    axes.set_title("Head-pose error per condition (bars at 0: no face detected)")
    axes.legend(fontsize=8)
    with atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp, dpi=100)


def plot_identity_vs_yaw(path: Path, rows: list[ImageScore], methods: list[str]) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.0, 4.0), tight_layout=True)
    axes = figure.add_subplot()
    for method in methods:
        by_yaw: dict[float, list[float]] = defaultdict(list)
        for r in rows:
            if r.method == method and r.face_detected:
                by_yaw[round(r.requested_yaw, 1)].append(r.id_similarity)
        yaws = sorted(by_yaw)
        axes.plot(yaws, [_mean(by_yaw[y]) for y in yaws], marker="o", label=method)
    axes.set_xlabel("requested yaw (degrees)")
    axes.set_ylabel("identity similarity (cosine)")
    axes.set_title("Identity similarity against yaw (mean over pitch, prompts, seeds)")
    axes.legend(fontsize=8)
    with atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp, dpi=100)


def plot_method_grid(path: Path, run_dir: Path, identity: Identity, reference: np.ndarray, methods: list[str], spec: BenchmarkSpec) -> None:
    """Reference + one image per condition (first prompt, first seed), one row per method."""
    from matplotlib.figure import Figure

    columns = 1 + len(spec.conditions)
    figure = Figure(figsize=(1.6 * columns, 1.7 * len(methods) + 0.4), tight_layout=True)
    prompt, seed = spec.prompts[0], spec.seeds[0]
    for row, method in enumerate(methods):
        for column in range(columns):
            axes = figure.add_subplot(len(methods), columns, row * columns + column + 1)
            axes.set_xticks([])
            axes.set_yticks([])
            if column == 0:
                axes.imshow(reference)
                axes.set_ylabel(method, fontsize=7)
                if row == 0:
                    axes.set_title("reference", fontsize=7)
                continue
            condition = spec.conditions[column - 1]
            file = image_path(run_dir, method, identity.identity_id, prompt.prompt_id, condition.name, seed)
            if file.is_file():
                axes.imshow(np.asarray(Image.open(file).convert("RGB")))
            if row == 0:
                axes.set_title(condition.name, fontsize=6)
    figure.suptitle(f'{identity.identity_id}: "{prompt.render(identity.subject)}", seed {seed}', fontsize=8)
    with atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp, dpi=100)


def write_report(
    run_dir: str | Path,
    rows: list[ImageScore],
    methods: list[str],
    spec: BenchmarkSpec,
    identities: list[Identity],
    references: dict[str, np.ndarray],
    notes: ReportNotes,
) -> dict[str, Path]:
    """Write every report file; returns their paths by name."""
    run_dir = Path(run_dir)
    folder = run_dir / REPORT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    summaries = method_summaries(rows, methods)
    conditions = condition_summaries(rows, methods, spec)
    files = {
        "per_image": folder / "per_image.csv",
        "summary": folder / "summary.csv",
        "per_condition": folder / "per_condition.csv",
        "table": folder / "table.md",
        "pose_plot": folder / "pose_error_by_condition.png",
        "identity_plot": folder / "identity_vs_yaw.png",
    }
    write_csv(files["per_image"], SCORE_COLUMNS, [asdict(r) for r in rows])
    write_csv(files["summary"], SUMMARY_COLUMNS, summaries)
    write_csv(files["per_condition"], CONDITION_COLUMNS, conditions)
    write_text_atomically(files["table"], markdown_table(summaries, notes))
    plot_pose_error(files["pose_plot"], conditions, methods, spec)
    plot_identity_vs_yaw(files["identity_plot"], rows, methods)
    for identity in identities:
        grid = folder / "grids" / f"{identity.identity_id}.png"
        grid.parent.mkdir(parents=True, exist_ok=True)
        plot_method_grid(grid, run_dir, identity, references[identity.identity_id], methods, spec)
        files[f"grid:{identity.identity_id}"] = grid
    logger.info("Report written to %s", folder)
    return files


__all__ = [
    "PAPER_CAPHUMAN",
    "PAPER_ROW_LABEL",
    "ReportNotes",
    "TABLE_COLUMNS",
    "condition_summaries",
    "markdown_table",
    "method_summaries",
    "summarise",
    "write_report",
]
