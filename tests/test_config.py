"""Typed configs: YAML files, defaults, validation messages, saving next to outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from caphuman.config import CapHumanConfig, load_config, save_config
from caphuman.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_published_config_has_the_published_settings():
    config = load_config(CONFIGS / "caphuman_sd15.yaml")
    sampling = config.sampling
    assert (sampling.scheduler, sampling.num_inference_steps, sampling.eta, sampling.guidance_scale) == ("ddim", 20, 0.0, 7.0)
    assert (sampling.capface_strength, sampling.mask_gating, sampling.tau, sampling.identity_guidance_scale) == (1.0, True, 0, None)
    assert (sampling.height, sampling.width) == (512, 512)
    model = config.model
    assert (model.backbone, model.face_recognizer, model.face_embedding_dim) == ("sd15", "facenet", 512)
    assert model.head_prior == "deca"


def test_tiny_config_is_the_tiny_backbone():
    config = load_config(CONFIGS / "tiny.yaml")
    assert config.model.backbone == "tiny" and config.model.head_prior == "builtin"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["sampling.bogus=1"], "unknown key 'sampling.bogus'"),
        (["model.tiny.nope=1"], "unknown key 'model.tiny.nope'"),
        (["sampling.num_inference_steps=abc"], "sampling.num_inference_steps"),
        (["sampling.scheduler=magic"], "sampling.scheduler must be one of"),
        (["sampling.height=500"], "sampling.height must be a positive multiple of 8"),
        (["sampling.tau=2000"], "sampling.tau"),
        (["model.face_recognizer=dlib"], "face_embedding_dim is 512 but the 'dlib' recogniser gives 128"),
    ],
)
def test_bad_values_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(CONFIGS / "caphuman_sd15.yaml", overrides)


def test_bad_key_in_a_yaml_file_names_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("sampling:\n  guidance: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key 'sampling.guidance'"):
        load_config(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_a_removed_setting_is_ignored_with_a_warning(tmp_path, caplog):
    # model.clip_embedding_dim and model.cross_attention_dim were checked but never read; configs
    # saved before they were removed (next to outputs, in exported adapters) still load.
    old = tmp_path / "old.yaml"
    old.write_text((CONFIGS / "tiny.yaml").read_text().replace("model:\n", "model:\n  clip_embedding_dim: 32\n  cross_attention_dim: 32\n", 1))
    with caplog.at_level("WARNING", logger="caphuman.config"):
        config = load_config(old, ["model.cross_attention_dim=7"])
    assert config == load_config(CONFIGS / "tiny.yaml")
    messages = [record.getMessage() for record in caplog.records]
    assert any("old.yaml: model.clip_embedding_dim is no longer a setting" in message for message in messages), messages
    assert any("override: model.cross_attention_dim is no longer a setting" in message for message in messages), messages


def test_saved_config_loads_back_equal(tmp_path):
    config = load_config(CONFIGS / "tiny.yaml", ["sampling.seed=99", "sampling.scheduler=unipc"])
    save_config(config, tmp_path / "out" / "config.yaml", extra={"command": "caphuman sample"})
    data = yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())
    assert data["command"] == "caphuman sample"
    data.pop("command")
    reloaded_path = tmp_path / "reloaded.yaml"
    reloaded_path.write_text(yaml.safe_dump(data))
    assert load_config(reloaded_path) == config
    assert isinstance(config, CapHumanConfig)


def test_training_config_serves_as_model_config_for_other_commands():
    config = load_config(CONFIGS / "tiny_train.yaml")
    assert config.model == load_config(CONFIGS / "tiny.yaml").model
    with pytest.raises(ConfigError, match="unknown key 'trainingg'"):
        load_config(CONFIGS / "tiny.yaml", ["trainingg.max_steps=3"])


def test_shipped_configs_resolve_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_config("configs/tiny.yaml").model.backbone == "tiny"
    with pytest.raises(ConfigError, match="'configs/nope.yaml' does not exist"):
        load_config("configs/nope.yaml")
