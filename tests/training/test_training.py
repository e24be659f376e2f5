"""Training: exact resume (with DataLoader workers), the loss (with its mask term), frozen
backbone, export -> sampling, and the datasets the batch stream accepts.

Data is a small dataset in the real format (caphuman.data: tar shards + index) written directly
with ShardWriter from synthetic arrays (smooth images, a disc-shaped face mask and hint), so the
tests read it through the real CapHumanDataset without running the face models.
tests/training/test_train_end_to_end.py covers the path from real photos through `caphuman preprocess`.
"""

from __future__ import annotations

import math
import multiprocessing
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import IterableDataset

from caphuman.commands.train import train
from caphuman.data.dataset import CapHumanDataset, ConditionDropout, collate
from caphuman.data.records import FaceRecord, record_key
from caphuman.data.shards import ShardWriter
from caphuman.models.adapter import CapHumanAdapter
from caphuman.training.config import load_train_config
from tests.synthetic import empty_head_params

IMAGE_SIZE = 64
EMBED_DIM = 512
NUM_RECORDS = 10
SHARD_SIZE = 3  # -> 4 shards: with 2 DataLoader workers each reads whole shards
CAPTIONS = ["a photo of a person", "a portrait, smiling", "a person outdoors"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def synthetic_record(index: int) -> FaceRecord:
    rng = np.random.default_rng(1000 + index)
    coarse = rng.uniform(0, 255, (8, 8, 3)).astype(np.float32)
    image = F.interpolate(torch.from_numpy(coarse).permute(2, 0, 1)[None], size=IMAGE_SIZE, mode="bilinear")[0]
    centre = rng.uniform(20, 44, 2)
    ys, xs = np.mgrid[:IMAGE_SIZE, :IMAGE_SIZE]
    mask = (((xs - centre[0]) ** 2 + (ys - centre[1]) ** 2) < 14**2).astype(np.uint8)
    hint = (rng.uniform(0, 1, (9, 1, 1)) * mask[None]).astype(np.float16)
    embedding = rng.standard_normal(EMBED_DIM).astype(np.float32)
    return FaceRecord(
        key=record_key(f"person_{index:03d}.jpg"),
        image=image.permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy(),
        clip_crop=rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
        face_embedding=embedding / np.linalg.norm(embedding),
        face_mask=mask,
        hint=hint,
        head_params=empty_head_params(),
        caption=CAPTIONS[index % len(CAPTIONS)],
        source=f"person_{index:03d}.jpg",
    )


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("training_data")
    writer = ShardWriter(root, shard_size=SHARD_SIZE)
    for index in range(NUM_RECORDS):
        writer.add_record(synthetic_record(index))
    writer.commit()
    return root


class LossRecorder(pl.Callback):
    """Records (global_step, loss) after every optimiser step."""

    def __init__(self):
        self.losses: list[tuple[int, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append((trainer.global_step, float(outputs["loss"])))


def tiny_config(output_dir, dataset_root="unused", **overrides):
    values = {
        "training.output_dir": str(output_dir),
        "training.data.root": str(dataset_root),
        "training.max_steps": 5,
        "training.checkpoint_every": 2,
        "training.validation.every_n_steps": 0,
        "training.log_every_n_steps": 1,
        **overrides,
    }
    return load_train_config("configs/tiny_train.yaml", [f"{key}={value}" for key, value in values.items()])


def run(config, backbone, *callbacks):
    return train(config, extra_callbacks=list(callbacks), backbone=backbone, command="pytest")


def test_resume_with_dataloader_workers_continues_with_exactly_the_same_losses(tmp_path, tiny_backbone, dataset_root):
    # Batch 4 from 2 workers over 4 shards (6 and 4 records per worker and epoch): every worker
    # crosses an epoch boundary within 5 steps, and the resume starts mid-stream at step 3.
    options = {"training.data.num_workers": 2, "training.data.dropout.identity": 0.3, "training.data.dropout.hint": 0.2}
    full_recorder = LossRecorder()
    full = run(tiny_config(tmp_path / "full", dataset_root, **options), tiny_backbone, full_recorder)

    first_recorder = LossRecorder()
    # Stops at 3 with checkpoints every 2: the resume starts from the final save, not a periodic one.
    run(tiny_config(tmp_path / "split", dataset_root, **options, **{"training.max_steps": 3}), tiny_backbone, first_recorder)
    assert torch.load(tmp_path / "split" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3
    second_recorder = LossRecorder()
    resumed = run(tiny_config(tmp_path / "split", dataset_root, **options, **{"training.resume": "last"}), tiny_backbone, second_recorder)

    assert [step for step, _ in full_recorder.losses] == [1, 2, 3, 4, 5]
    assert first_recorder.losses + second_recorder.losses == full_recorder.losses
    # The losses must differ between steps, or equality above would prove little.
    assert len({loss for _, loss in full_recorder.losses}) == 5
    for (name, a), (_, b) in zip(full.adapter.state_dict().items(), resumed.adapter.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    # The EMA (on in tiny_train.yaml) was restored too: both exports are identical.
    exported_full = CapHumanAdapter.from_pretrained(tmp_path / "full" / "adapter").state_dict()
    exported_resumed = CapHumanAdapter.from_pretrained(tmp_path / "split" / "adapter").state_dict()
    assert all(torch.equal(exported_full[k], exported_resumed[k]) for k in exported_full)
    assert not torch.equal(exported_full["capface.controlnet_mid_block.weight"], full.adapter.state_dict()["capface.controlnet_mid_block.weight"])
    # The endless streams' DataLoader workers ended with their runs.
    assert multiprocessing.active_children() == []


def test_loss_matches_an_independent_computation_including_the_mask_term(tiny_backbone, dataset_root):
    """Recompute one batch's loss by hand (closed-form noising, manual projections)."""
    from caphuman.build import load_adapter
    from caphuman.config import CapHumanConfig
    from caphuman.training.module import CapHumanTrainingModule, step_generator

    config = tiny_config("unused", dataset_root, **{"training.mask_loss_weight": 0.7})
    adapter = load_adapter(CapHumanConfig(model=config.model), tiny_backbone, "checkpoints")
    # Non-zero zero-convs and mask head, so every path of the loss carries signal.
    with torch.no_grad():
        torch.manual_seed(3)
        for parameter in adapter.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    module = CapHumanTrainingModule(config, tiny_backbone, adapter)
    dataset = CapHumanDataset(
        dataset_root,
        image_size=IMAGE_SIZE,
        clip_image_processor=tiny_backbone.feature_extractor,
        dropout=ConditionDropout(0.0, 0.0, 0.0),
        shuffle=False,
    )
    records = [record for record, _ in zip(dataset, range(4), strict=False)]
    records[0]["drop_hint"], records[2]["drop_hint"] = torch.tensor(True), torch.tensor(True)
    records[1]["drop_identity"], records[2]["drop_identity"] = torch.tensor(True), torch.tensor(True)
    batch = collate(records)
    terms = module.compute_loss(batch, step_generator(0, 5))

    # Independent: the same draws in the documented order, then the published formulas.
    generator = step_generator(0, 5)
    vae, unet = tiny_backbone.vae, tiny_backbone.unet
    with torch.no_grad():
        moments = vae.quant_conv(vae.encoder(batch["pixel_values"]))
        mean, logvar = moments.chunk(2, dim=1)
        std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
        latents = (mean + std * torch.randn(mean.shape, generator=generator)) * 0.18215
        timesteps = torch.randint(0, 1000, (4,), generator=generator)
        noise = torch.randn(latents.shape, generator=generator)
        betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
        alpha_bar = torch.cumprod(1 - betas, 0)[timesteps].float()[:, None, None, None]
        noisy = alpha_bar.sqrt() * latents + (1 - alpha_bar).sqrt() * noise
        ids = tiny_backbone.tokenizer(batch["caption"], padding="max_length", max_length=77, return_tensors="pt").input_ids
        text = tiny_backbone.text_encoder(ids).last_hidden_state
        clip = tiny_backbone.image_encoder(pixel_values=batch["clip_pixel_values"][:, 0]).last_hidden_state
        encoder = adapter.identity_encoder
        tokens = torch.cat([encoder.local_projection(clip), encoder.global_projection(batch["face_embeds"])], dim=1)
        tokens = tokens * (~batch["drop_identity"]).float()[:, None, None]
        hint = batch["hint"] * (~batch["drop_hint"]).float()[:, None, None, None]
        out = adapter.capface(noisy, timesteps, tokens, hint)

        # The published gate: torchvision 0.14.1's F.resize on a tensor = plain bilinear, no antialias.
        def gate(size):
            return F.interpolate(out.face_mask, size=size, mode="bilinear", align_corners=False).gt(0.5).float()

        down = [r * gate(r.shape[-2:]) for r in out.down_block_res_samples]
        mid = out.mid_block_res_sample * gate(out.mid_block_res_sample.shape[-2:])
        pred = unet(noisy, timesteps, encoder_hidden_states=text, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
        noise_loss = ((pred - noise) ** 2).mean()
        # Published target: the integer 0/1 face region resized 64 -> 8 by a plain bilinear sample
        # (cell i samples x = 8 i + 3.5: the mean of pixels 8i+3 and 8i+4 in each direction), rounded
        # back to an integer half to even (0.5 -> 0); every sample counts, hint-dropped ones too.
        region = batch["face_mask"]
        centre = (region[..., 3::8, 3::8] + region[..., 3::8, 4::8] + region[..., 4::8, 3::8] + region[..., 4::8, 4::8]) / 4
        target = (centre > 0.5).float()
        assert ((centre > 0) & (centre < 1)).any()  # the disc's edge crosses some centres
        mask_loss = ((out.face_mask - target) ** 2).mean()

    assert mask_loss > 1e-3  # the mask term is there and not negligible
    torch.testing.assert_close(terms.noise, noise_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(terms.mask, mask_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(terms.total, noise_loss + 0.7 * mask_loss, rtol=1e-5, atol=1e-6)


def test_only_capface_and_identity_params_train_and_export_samples_match(tmp_path, tiny_backbone, dataset_root):
    from caphuman.build import build_pipeline
    from caphuman.conditions.identity import IdentityInputs
    from caphuman.config import load_config
    from caphuman.pipeline import CapHumanPipeline
    from caphuman.schedulers import make_scheduler
    from caphuman.training.callbacks import find_ema

    frozen_before = {name: {k: v.clone() for k, v in module.state_dict().items()} for name, module in tiny_backbone.modules().items()}
    config = tiny_config(tmp_path / "run", dataset_root, **{"training.max_steps": 4, "training.validation.every_n_steps": 2})
    initial = None

    class Snapshot(pl.Callback):
        def on_fit_start(self, trainer, pl_module):
            nonlocal initial
            initial = {k: v.clone() for k, v in pl_module.adapter.state_dict().items()}
            assert {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]} == {id(p) for p in pl_module.adapter.parameters()}

    module = run(config, tiny_backbone, Snapshot())
    for name, module_state in tiny_backbone.modules().items():
        for key, value in module_state.state_dict().items():
            assert torch.equal(value, frozen_before[name][key]), f"frozen {name}.{key} changed"
    trained = module.adapter.state_dict()
    for key in ("capface.controlnet_mid_block.weight", "capface.face_mask_head.weight", "identity_encoder.global_projection.weight"):
        assert (trained[key] - initial[key]).abs().max() > 1e-6, key
    assert sorted(p.name for p in (tmp_path / "run" / "samples").glob("*.png")) == ["step_0000002.png", "step_0000004.png"]

    # Sampling through caphuman.build with the export == sampling with the in-memory EMA weights.
    reference = CapHumanDataset(
        dataset_root,
        image_size=IMAGE_SIZE,
        clip_image_processor=tiny_backbone.feature_extractor,
        dropout=ConditionDropout(0.0, 0.0, 0.0),
        shuffle=False,
    )
    record = next(iter(reference))
    identity = IdentityInputs(record["face_embeds"][None], record["clip_pixel_values"][None])
    hint = record["hint"][None]
    sample_config = load_config(tmp_path / "run" / "adapter" / "sample_config.yaml")
    exported = build_pipeline(sample_config, weights_dir=tmp_path, device="cpu", with_recognizer=False)
    exported.set_progress_bar_config(disable=True)
    kwargs = dict(identity=identity, num_inference_steps=3, output_type="np")
    from_export = exported("a photo of a person", hint, generator=torch.Generator().manual_seed(0), **kwargs).images

    ema = find_ema(module.trainer)
    with ema.applied(module.adapter):
        in_memory = CapHumanPipeline(
            vae=tiny_backbone.vae,
            text_encoder=tiny_backbone.text_encoder,
            tokenizer=tiny_backbone.tokenizer,
            unet=tiny_backbone.unet,
            capface=module.adapter.capface.eval(),
            identity_encoder=module.adapter.identity_encoder,
            image_encoder=tiny_backbone.image_encoder,
            feature_extractor=tiny_backbone.feature_extractor,
            scheduler=make_scheduler("ddim", tiny_backbone.scheduler_config),
        )
        in_memory.set_progress_bar_config(disable=True)
        from_memory = in_memory("a photo of a person", hint, generator=torch.Generator().manual_seed(0), **kwargs).images
    assert from_export.shape == (1, IMAGE_SIZE, IMAGE_SIZE, 3) and all(math.isfinite(v) for v in from_export.ravel()[:100])
    # The exported weights are bit-identical to the in-memory EMA weights ...
    exported_state = CapHumanAdapter.from_pretrained(tmp_path / "run" / "adapter").state_dict()
    with ema.applied(module.adapter):
        in_memory_state = {k: v.clone() for k, v in module.adapter.state_dict().items()}
    assert all(torch.equal(exported_state[k], in_memory_state[k]) for k in in_memory_state)
    # ... and the images agree to float32 rounding (kernels may pick other paths for loaded tensors).
    np.testing.assert_allclose(from_export, from_memory, atol=1e-5, rtol=0)
    assert from_export.std() > 0.01  # not a constant image


class OnePassRecords(IterableDataset):
    """A custom dataset read one finite pass per epoch, with set_epoch but no skip_batches."""

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        yield from ({"value": torch.tensor(index)} for index in range(5))


def test_training_refuses_a_dataset_it_could_not_resume_exactly(tmp_path, tiny_backbone, dataset_root):
    with pytest.raises(TypeError, match=r"OnePassRecords\) must be endless \(repeat=True\) with skip_batches"):
        train(tiny_config(tmp_path / "run"), datasets=(OnePassRecords(), collate, None), backbone=tiny_backbone)
    # CapHumanDataset read one pass per epoch is refused too: only the endless one skips exactly.
    finite = CapHumanDataset(dataset_root, image_size=IMAGE_SIZE, repeat=False)
    with pytest.raises(TypeError, match="CapHumanDataset"):
        train(tiny_config(tmp_path / "run"), datasets=(finite, collate, None), backbone=tiny_backbone)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_bad_training_config_values_name_the_key(tmp_path):
    from caphuman.errors import ConfigError

    with pytest.raises(ConfigError, match="training.optimizer.lr"):
        tiny_config(tmp_path, **{"training.optimizer.lr": -1})
    with pytest.raises(ConfigError, match="training.strategy"):
        tiny_config(tmp_path, **{"training.strategy": "horovod"})


def test_the_documented_preprocess_config_has_the_tiny_training_model():
    """configs/tiny_train.yaml tells users to preprocess with configs/tiny.yaml: same recogniser,
    embedding size and head prior, or the records would not fit the model."""
    from caphuman.config import load_config

    assert load_config("configs/tiny.yaml").model == load_train_config("configs/tiny_train.yaml").model


@pytest.mark.slow
def test_two_ddp_processes_with_batch_b_train_what_one_process_with_batch_2b_does(tmp_path):
    """torchrun, 2 CPU processes (gloo DDP) x batch 2 == 1 process x batch 4, to float tolerance.

    One shard, so the dataset deals records round robin to the ranks (record mode) and the two
    ranks' batches together hold the one process's batch; the per-sample noise generators follow
    the samples. Adam's eps = 1 keeps its update close to lr x gradient, so that rounding in
    near-zero gradients is not magnified into full steps of size lr.
    """
    import os
    import subprocess
    import sys

    from caphuman.training.export import adapter_from_checkpoint

    root = tmp_path / "one_shard"
    writer = ShardWriter(root, shard_size=100)
    for index in range(8):
        writer.add_record(synthetic_record(index))
    writer.commit()
    options = {
        "training.data.root": str(root),
        "training.data.shuffle": "false",
        "training.data.dropout.hint": 0.0,
        "training.max_steps": 3,
        "training.checkpoint_every": 3,
        "training.validation.every_n_steps": 0,
        "training.ema.enabled": "false",
        "training.optimizer.lr": 0.05,
        "training.optimizer.eps": 1.0,
        "training.optimizer.weight_decay": 0.0,
        "training.log_every_n_steps": 1,
        "training.accelerator": "cpu",
    }

    def final_weights(out) -> dict[str, torch.Tensor]:
        return adapter_from_checkpoint(out / "checkpoints" / "last.ckpt", use_ema=False)[0].state_dict()

    single, half = tmp_path / "single", tmp_path / "half"
    train(tiny_config(single, **options, **{"training.data.batch_size": 4}), command="pytest")
    train(tiny_config(half, **options, **{"training.data.batch_size": 2}), command="pytest")

    ranks = tmp_path / "ddp"
    overrides = {**options, "training.output_dir": str(ranks), "training.data.batch_size": 2, "training.devices": 2, "training.strategy": "ddp"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "caphuman.cli",
        "train",
        "--config",
        "configs/tiny_train.yaml",
        *[f"{key}={value}" for key, value in overrides.items()],
    ]
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo) + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]

    expected, ddp, other = final_weights(single), final_weights(ranks), final_weights(half)
    for name in expected:
        torch.testing.assert_close(ddp[name], expected[name], atol=1e-5, rtol=1e-4, msg=name)
    # Training on half the records moves the weights elsewhere by far more than that tolerance.
    assert max((other[name] - expected[name]).abs().max().item() for name in expected) > 1e-3
