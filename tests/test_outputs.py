"""What caphuman never does to a user's files (issue 10), through the `caphuman` commands.

Each data-loss case a user met is replayed through caphuman.cli.main on the tiny configs: the
command must refuse with exit code 2 and one sentence naming the folder, and every file that was
there must be unchanged. The ownership module (caphuman/outputs.py) is also checked directly.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from skimage import data

from caphuman.cli import main
from caphuman.data.shards import INDEX_FILE, ShardWriter, claim_dataset, read_index
from caphuman.errors import CapHumanError
from caphuman.outputs import LOCK_FILE, MARKER_FILE, OutputFolderError, claim_folder, save_image_atomically

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.yaml")
TINY_TRAIN = str(ROOT / "configs" / "tiny_train.yaml")


def snapshot(folder: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under ``folder`` (our bookkeeping excluded)."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name not in (MARKER_FILE, LOCK_FILE)
    }


def refused(caplog, *needles: str) -> None:
    """The command's last error line (the one sentence the CLI prints) names ``needles``."""
    errors = [record.getMessage() for record in caplog.records if record.levelname == "ERROR"]
    assert errors, "no error was reported"
    assert "Traceback" not in caplog.text
    for needle in needles:
        assert needle in errors[-1], errors[-1]
    caplog.clear()


@pytest.fixture(scope="module")
def face(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("photos") / "astronaut.png"
    Image.fromarray(data.astronaut()).save(path)
    return path


def sample(face: Path, out: Path, *extra: str) -> int:
    return main(["sample", "--config", TINY, "--ref", str(face), "--prompt", "a person", "--steps", "1", "--out", str(out), *extra])


# --- caphuman convert -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def original_checkpoint(tmp_path_factory, tiny_backbone):
    """A tiny checkpoint in the original release's key layout (as tests/weights/test_original_checkpoint.py builds it) and
    its CapFace config (the CLI assumes SD 1.5 sizes; the library takes the tiny config)."""
    from caphuman.models.adapter import CapHumanAdapter
    from caphuman.weights.original_checkpoint import export_original

    adapter = CapHumanAdapter.from_unet(tiny_backbone.unet, 512, tiny_backbone.image_encoder.config.hidden_size, seed=0)
    path = tmp_path_factory.mktemp("original") / "caphuman.ckpt"
    torch.save({"state_dict": export_original(adapter)}, path)
    return path, adapter.capface.config


def test_convert_refuses_a_folder_of_other_files_and_keeps_them(tmp_path, original_checkpoint, caplog):
    from caphuman.weights.original_checkpoint import convert_original_checkpoint

    path, capface_config = original_checkpoint
    weights = tmp_path / "checkpoints"
    weights.mkdir()
    (weights / "Realistic_Vision_V3.0.ckpt").write_bytes(b"weights the user downloaded")
    (weights / "deca").mkdir()
    (weights / "deca" / "deca_model.tar").write_bytes(b"more weights")
    before = snapshot(weights)
    assert main(["convert", "--from", str(path), "--out", str(weights)]) == 2
    refused(caplog, str(weights), "new, empty folder")
    # The writer itself refuses too (the CLI's check runs first; this is the one that once
    # replaced the whole folder, leaving it empty and 0700).
    with pytest.raises(CapHumanError, match="not part of a CapHuman adapter"):
        convert_original_checkpoint(path, weights, capface_config=capface_config)
    assert snapshot(weights) == before
    assert stat.S_IMODE(weights.stat().st_mode) != 0o700


def test_convert_writes_with_the_umask_and_replaces_an_adapter_only_with_overwrite(tmp_path, original_checkpoint, caplog):
    from caphuman.weights.original_checkpoint import convert_original_checkpoint

    path, capface_config = original_checkpoint
    out = tmp_path / "caphuman"
    old_umask = os.umask(0o022)
    try:
        convert_original_checkpoint(path, out, capface_config=capface_config)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    for item in out.rglob("*"):
        assert stat.S_IMODE(item.stat().st_mode) == (0o755 if item.is_dir() else 0o644), item
    before = snapshot(out)
    assert main(["convert", "--from", str(path), "--out", str(out)]) == 2
    refused(caplog, str(out), "--overwrite")
    assert snapshot(out) == before
    # Replacing an adapter folder (what --overwrite allows) keeps it an adapter folder.
    convert_original_checkpoint(path, out, capface_config=capface_config)
    assert snapshot(out) == before


# --- caphuman preprocess ----------------------------------------------------------------------


def preprocess(images: Path, out: Path) -> int:
    return main(["preprocess", "--config", TINY, "--images", str(images), "--out", str(out), "--image-size", "64", "--no-progress"])


def test_preprocess_refuses_a_folder_with_tar_files_it_did_not_write(tmp_path, face, caplog):
    out = tmp_path / "data"
    (out / "shards").mkdir(parents=True)
    (out / "shards" / "shard-000000.tar").write_bytes(b"someone else's shard")
    (out / "backup.tar").write_bytes(b"a user's archive")
    before = snapshot(out)
    assert preprocess(face.parent, out) == 2
    refused(caplog, str(out), "--out")
    assert snapshot(out) == before


def test_second_preprocess_writer_is_refused_and_the_live_temp_shard_kept(tmp_path, face, caplog):
    out = tmp_path / "data"
    with claim_dataset(out):
        # What a live writer has on disk: its open, uncommitted shard.
        live = out / "shards" / ".tmp-shard-000000.tar"
        live.parent.mkdir(parents=True)
        live.write_bytes(b"records being written")
        assert preprocess(face.parent, out) == 2
        refused(caplog, str(out), "another caphuman process")
        assert live.read_bytes() == b"records being written"
        assert not (out / INDEX_FILE).exists()
    # Once the first writer is gone, a run may proceed (its leftover is a dead run's).
    assert preprocess(face.parent, out) == 0
    assert len(read_index(out)) == 1


def test_rerun_drops_index_lines_whose_records_are_not_in_their_shard(tmp_path):
    """What two unlocked writers left behind: the index names a record its shard lacks."""
    from tests.training.test_training import synthetic_record

    root = tmp_path / "data"
    writer = ShardWriter(root, shard_size=2)
    for index in range(2):
        writer.add_record(synthetic_record(index))
    writer.commit()
    entries = read_index(root)
    ghost = {"key": "ghost", "shard": entries[0].shard, "source": "ghost.jpg", "caption": "x"}
    with open(root / INDEX_FILE, "a", encoding="utf-8") as stream:
        stream.write(json.dumps(ghost) + "\n")
    ShardWriter(root, shard_size=2)
    assert [entry.key for entry in read_index(root)] == [entry.key for entry in entries]


# --- caphuman train ---------------------------------------------------------------------------


def test_train_into_a_finished_run_needs_resume(tmp_path, caplog):
    from tests.training.test_training import synthetic_record

    dataset = tmp_path / "data"
    writer = ShardWriter(dataset, shard_size=4)
    for index in range(4):
        writer.add_record(synthetic_record(index))
    writer.commit()
    run = tmp_path / "run"
    args = [
        "train",
        "--config",
        TINY_TRAIN,
        f"training.data.root={dataset}",
        f"training.output_dir={run}",
        "training.max_steps=2",
        "training.checkpoint_every=2",
        "training.validation.every_n_steps=0",
        "training.data.batch_size=2",
        "training.data.num_workers=0",
        "training.data.image_size=64",
    ]
    assert main(args) == 0
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "adapter").is_dir()
    before = snapshot(run)
    assert main(args) == 2
    refused(caplog, str(run), "--resume")
    assert snapshot(run) == before

    # A truncated checkpoint given to --export-only (and --resume) is one sentence too.
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    for flag in ("--export-only", "--resume"):
        assert main([*args, flag]) == 2
        refused(caplog, "last.ckpt", "truncated")


# --- caphuman sample --------------------------------------------------------------------------


def test_sample_refuses_a_folder_of_other_files(tmp_path, face, caplog):
    out = tmp_path / "holiday"
    out.mkdir()
    (out / "image_000.png").write_bytes(b"the user's own photo")
    (out / "notes.txt").write_text("keep me")
    before = snapshot(out)
    assert sample(face, out) == 2
    refused(caplog, str(out), "did not write")
    assert snapshot(out) == before
    assert not (out / LOCK_FILE).exists() and not (out / MARKER_FILE).exists()
    # A lone photo named like ours is still the user's: not even --overwrite touches it.
    (out / "notes.txt").unlink()
    assert sample(face, out, "--overwrite") == 2
    refused(caplog, str(out), "did not write")
    assert (out / "image_000.png").read_bytes() == b"the user's own photo"


def test_sample_reuse_needs_overwrite_which_removes_only_the_earlier_runs_files(tmp_path, face, caplog):
    out = tmp_path / "run"
    old_umask = os.umask(0o022)
    try:
        assert sample(face, out, "--num-images", "2") == 0
    finally:
        os.umask(old_umask)
    for name in ("image_000.png", "image_001.png", "hint.png", "config.yaml"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o644, name
    before = snapshot(out)
    assert sample(face, out, "--num-images", "1", "--seed", "5") == 2
    refused(caplog, str(out), "--overwrite")
    assert snapshot(out) == before

    # The user added a file next to the earlier run's: --overwrite removes only the run's files.
    (out / "my_notes.txt").write_text("added by the user")
    assert sample(face, out, "--num-images", "1", "--seed", "5", "--overwrite") == 0
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["config.yaml", "hint.png", "image_000.png", "my_notes.txt"]
    assert (out / "my_notes.txt").read_text() == "added by the user"
    settings = yaml.safe_load((out / "config.yaml").read_text())
    assert settings["sampling"]["num_images"] == 1 and settings["sampling"]["seed"] == 5


def test_config_records_a_command_a_shell_gives_back(tmp_path, face):
    out = tmp_path / "quoted"
    prompt = 'a photo of a person, it\'s "sunny" $HOME'
    assert main(["sample", "--config", TINY, "--ref", str(face), "--prompt", prompt, "--steps", "1", "--out", str(out)]) == 0
    command = yaml.safe_load((out / "config.yaml").read_text())["run"]["command"]
    echoed = subprocess.run(["bash", "-c", f"set -- {command}; printf '%s\\n' \"$@\""], capture_output=True, text=True, check=True)
    assert prompt in echoed.stdout.splitlines()


# --- caphuman eval ----------------------------------------------------------------------------


def test_eval_refuses_a_folder_of_other_files(tmp_path, face, caplog):
    out = tmp_path / "results"
    out.mkdir()
    (out / "paper.pdf").write_bytes(b"%PDF")
    assert (
        main(
            [
                "eval",
                "--benchmark",
                str(ROOT / "configs/benchmarks/smoke.yaml"),
                "--config",
                TINY,
                "--identities",
                str(face.parent),
                "--out",
                str(out),
                "--device",
                "cpu",
            ]
        )
        == 2
    )
    refused(caplog, str(out), "did not write")
    assert sorted(p.name for p in out.iterdir()) == ["paper.pdf"]


def test_eval_refuses_a_replaced_identity_photo_and_a_damaged_manifest(tmp_path):
    from caphuman.eval.benchmark import Identity
    from caphuman.eval.runner import MANIFEST, check_identity_photos, file_digest, read_manifest

    photo = tmp_path / "anna.png"
    Image.fromarray(data.astronaut()).save(photo)
    recorded = {"anna": {"path": str(photo), "subject": "person", "sha256": file_digest(photo)}}
    check_identity_photos(recorded, [Identity("anna", photo, "person")], tmp_path / MANIFEST)
    Image.fromarray(data.astronaut()[:, ::-1]).save(photo)  # another photo, the same name
    with pytest.raises(CapHumanError, match="anna"):
        check_identity_photos(recorded, [Identity("anna", photo, "person")], tmp_path / MANIFEST)
    (tmp_path / MANIFEST).write_bytes(b"\x00\xff{not json")
    with pytest.raises(CapHumanError, match=MANIFEST):
        read_manifest(tmp_path / MANIFEST)


# --- the ownership module ---------------------------------------------------------------------


def test_claim_folder_rules(tmp_path):
    file = tmp_path / "a_file"
    file.write_text("x")
    with pytest.raises(OutputFolderError, match="is a file"):
        claim_folder(file, "sample", existing="pass --overwrite")
    with claim_folder(tmp_path / "new", "sample", existing="pass --overwrite") as owned:
        owned.add_files(["image_000.png"])
        # A second claim while the first holds the lock is refused, even with the flag.
        with pytest.raises(OutputFolderError, match="another caphuman process"):
            claim_folder(tmp_path / "new", "sample", existing="pass --overwrite", allow_existing=True)
    (tmp_path / "new" / "image_000.png").write_bytes(b"png")
    with pytest.raises(OutputFolderError, match="caphuman sample, not train"):
        claim_folder(tmp_path / "new", "train", existing="pass --resume")
    # A failed run removes a folder it created and wrote nothing into.
    with pytest.raises(RuntimeError):
        with claim_folder(tmp_path / "typo", "sample", existing=""):
            raise RuntimeError("a bad photo")
    assert not (tmp_path / "typo").exists()


def test_parts_of_a_split_run_share_the_lock_that_a_whole_run_holds_alone(tmp_path):
    with claim_folder(tmp_path / "run", "eval", existing="", shared=True), claim_folder(tmp_path / "run", "eval", existing="", shared=True):
        with pytest.raises(OutputFolderError, match="another caphuman process"):
            claim_folder(tmp_path / "run", "eval", existing="")
    with claim_folder(tmp_path / "run", "eval", existing=""):
        with pytest.raises(OutputFolderError, match="another caphuman process"):
            claim_folder(tmp_path / "run", "eval", existing="", shared=True)


def test_atomic_image_write_follows_the_umask(tmp_path):
    old_umask = os.umask(0o027)
    try:
        save_image_atomically(Image.fromarray(np.zeros((4, 4, 3), np.uint8)), tmp_path / "x.png")
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE((tmp_path / "x.png").stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]
