"""The weights manifest, `caphuman doctor` and `caphuman download`, with locally built files."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import scipy.sparse
import torch
import yaml

from caphuman.weights.checks import STATUS_MALFORMED, STATUS_MISSING, STATUS_PRESENT, check_entry
from caphuman.weights.registry import DEFAULT_MANIFEST, load_manifest

REPO = Path(__file__).resolve().parents[2]


def _run_cli(monkeypatch, module: str, argv: list[str]) -> int:
    from caphuman import cli

    monkeypatch.setattr(cli, "COMMANDS", {argv[0]: module})
    return cli.main(argv)


def test_manifest_lists_every_path_the_code_reads():
    entries = load_manifest()
    paths = {entry.path for entry in entries.values()}
    # Paths the loaders look up by entry name (caphuman/build.py, head/deca/files.py, eval/identity_similarity.py).
    for path in ("facenet/20180402-114759-vggface2.pt", "arcface/glintr100.onnx", "face-parsing/79999_iter.pth",
                 "deca/deca_model.tar", "deca/generic_model.pkl", "deca/FLAME_texture.npz"):  # fmt: skip
        assert path in paths, path
    # Config-driven paths default to what configs/caphuman_sd15.yaml sets.
    config = yaml.safe_load((REPO / "configs" / "caphuman_sd15.yaml").read_text())["model"]
    for entry in entries.values():
        if entry.config_key:
            assert config[entry.config_key.split(".")[1]] == entry.path, entry.name
    for entry in entries.values():
        assert entry.source and entry.licence and entry.kind
        if entry.md5 is not None:
            assert len(entry.md5) == 32 and int(entry.md5, 16) >= 0
    assert entries["caphuman_original"].hf_repo == "VamosC/CapHuman"
    assert entries["clip_vision"].hf_repo == "openai/clip-vit-large-patch14"


def test_doctor_on_empty_folder_lists_everything_missing(tmp_path, monkeypatch, capsys):
    code = _run_cli(
        monkeypatch, "caphuman.commands.doctor", ["doctor", "--weights", str(tmp_path), "--config", str(REPO / "configs/caphuman_sd15.yaml")]
    )
    out = capsys.readouterr().out
    assert code == 0
    for name in load_manifest():
        assert any(line.split()[:2] == ["MISSING", name] for line in out.splitlines()), name
    assert "no  sample-sd15-published" in out


def test_doctor_reports_present_and_malformed_without_traceback(tmp_path, monkeypatch, capsys, tiny_backbone):
    from facenet_pytorch import InceptionResnetV1

    from caphuman.weights.ldm_layout import export_original_sd

    # A FaceNet state dict with the published names, and a BiSeNet file with wrong keys.
    (tmp_path / "facenet").mkdir()
    torch.save(InceptionResnetV1(classify=True, num_classes=8631).state_dict(), tmp_path / "facenet" / "20180402-114759-vggface2.pt")
    (tmp_path / "face-parsing").mkdir()
    torch.save({"not.a.bisenet.key": torch.zeros(3)}, tmp_path / "face-parsing" / "79999_iter.pth")
    # An SD .ckpt in the original layout (as the release downloads it), truncated.
    state = {k: v.contiguous() for k, v in export_original_sd(tiny_backbone.unet, tiny_backbone.vae, tiny_backbone.text_encoder).items()}
    sd_path = tmp_path / "Realistic_Vision_V3.0.ckpt"
    torch.save({"state_dict": state}, sd_path)
    data = sd_path.read_bytes()
    sd_path.write_bytes(data[: len(data) - 1000])
    # An ONNX "recogniser" that is just garbage bytes.
    (tmp_path / "arcface").mkdir()
    (tmp_path / "arcface" / "glintr100.onnx").write_bytes(b"\x00not onnx")

    code = _run_cli(
        monkeypatch, "caphuman.commands.doctor", ["doctor", "--weights", str(tmp_path), "--config", str(REPO / "configs/caphuman_sd15.yaml")]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "Traceback" not in out
    lines = {
        line.split()[1]: line.split()[0]
        for line in out.splitlines()
        if line.startswith("  ") and len(line.split()) > 2 and line.split()[0] in ("ok", "MISSING", "MALFORMED")
    }
    assert lines["facenet"] == "ok"
    assert lines["face_parsing"] == "MALFORMED"
    assert lines["stable_diffusion"] == "MALFORMED"
    assert lines["arcface"] == "MALFORMED"
    assert "yes recognizer-facenet" in out and "no  face-parser-bisenet" in out


def _tiny_flame(path: Path, vertices: int = 6) -> None:
    """A FLAME-shaped generic_model.pkl with plain numpy/scipy values (Python 2-style latin1 pickle)."""
    rng = np.random.default_rng(0)
    joints = 5
    data = {
        "v_template": rng.normal(size=(vertices, 3)),
        "shapedirs": rng.normal(size=(vertices, 3, 400)) * 1e-3,
        "posedirs": rng.normal(size=(vertices, 3, 36)) * 1e-3,
        "J_regressor": scipy.sparse.csc_matrix(np.full((joints, vertices), 1.0 / vertices)),
        "weights": np.full((vertices, joints), 1.0 / joints),
        "kintree_table": np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]]),
        "f": np.array([[0, 1, 2], [2, 3, 4], [3, 4, 5]], dtype=np.uint32),
    }
    path.write_bytes(pickle.dumps(data, protocol=2))


def test_doctor_checks_deca_and_flame_assets(tmp_path):
    from caphuman.head.deca.encoder import DecaCoarseEncoder

    entries = load_manifest()
    folder = tmp_path / "deca"
    folder.mkdir()
    _tiny_flame(folder / "generic_model.pkl")
    np.savez(
        folder / "FLAME_texture.npz",
        mean=np.zeros((8, 8, 3)),
        tex_dir=np.zeros((8, 8, 3, 50)),
        vt=np.zeros((6, 2)),
        ft=np.zeros((3, 3), dtype=np.int64),
    )
    torch.save({"E_flame": DecaCoarseEncoder().state_dict()}, folder / "deca_model.tar")
    for name in ("deca_model", "flame_model", "flame_texture"):
        assert check_entry(entries[name], tmp_path).status == STATUS_PRESENT, check_entry(entries[name], tmp_path)
    torch.save({"E_flame": {"encoder.conv1.weight": torch.zeros(64, 3, 7, 7)}}, folder / "deca_model.tar")
    check = check_entry(entries["deca_model"], tmp_path)
    assert check.status == STATUS_MALFORMED and "deca_model.tar" in check.detail
    np.savez(folder / "FLAME_texture.npz", mean=np.zeros((8, 8, 3)))
    assert check_entry(entries["flame_texture"], tmp_path).status == STATUS_MALFORMED


def test_clip_folder_and_adapter_checks(tmp_path, tiny_backbone):
    from caphuman.models.adapter import CapHumanAdapter

    entries = load_manifest()
    assert check_entry(entries["clip_vision"], tmp_path).status == STATUS_MISSING
    folder = tmp_path / "clip-vit-large-patch14"
    tiny_backbone.image_encoder.save_pretrained(folder)
    assert check_entry(entries["clip_vision"], tmp_path).status == STATUS_MALFORMED  # no tokenizer yet
    tiny_backbone.tokenizer.save_pretrained(folder)
    assert check_entry(entries["clip_vision"], tmp_path).status == STATUS_PRESENT
    CapHumanAdapter.from_unet(tiny_backbone.unet, 512, 32, seed=0).save_pretrained(tmp_path / "caphuman")
    assert check_entry(entries["caphuman"], tmp_path).status == STATUS_PRESENT


def test_download_without_network_is_one_sentence_exit_2(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    code = _run_cli(monkeypatch, "caphuman.commands.download", ["download", "caphuman_original", "--weights", str(tmp_path)])
    assert code == 2
    errors = [record.getMessage() for record in caplog.records if record.levelname == "ERROR"]
    assert len(errors) == 1 and "network" in errors[0] and "VamosC/CapHuman" in errors[0]
    assert not (tmp_path / "caphuman.ckpt").exists()


def test_download_of_a_file_not_on_the_hub_says_where_to_get_it(tmp_path, monkeypatch, caplog):
    code = _run_cli(monkeypatch, "caphuman.commands.download", ["download", "facenet", "--weights", str(tmp_path)])
    assert code == 2
    assert "facenet-pytorch" in caplog.text


def test_default_manifest_is_the_repository_one():
    assert DEFAULT_MANIFEST == REPO / "checkpoints" / "manifest.yaml"
