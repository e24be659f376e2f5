"""Training: exact resume, the loss (with its mask term), frozen backbone, export -> sampling.

Data is a small synthetic in-memory dataset that yields the same records as
caphuman.data.dataset.CapHumanDataset (smooth random images, a disc-shaped face mask and hint),
deterministic per (seed, epoch), so the tests need no preprocessing run.
"""

from __future__ import annotations

import math

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import IterableDataset

from caphuman.commands.train import train
from caphuman.training.config import load_train_config

IMAGE_SIZE = 64
CLIP_SIZE = 32
EMBED_DIM = 512
CAPTIONS = ["a photo of a person", "a portrait, smiling", "a person outdoors"]


class SyntheticRecords(IterableDataset):
    """``count`` fixed records; each epoch a seeded permutation and seeded dropout flags."""

    def __init__(self, count: int = 10, seed: int = 0, drop_identity: float = 0.3, drop_hint: float = 0.2):
        self.count, self.seed, self.epoch = count, seed, 0
        self.drop_identity, self.drop_hint = drop_identity, drop_hint

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def record(self, index: int) -> dict:
        generator = torch.Generator().manual_seed(1000 + index)
        image = F.interpolate(torch.rand(1, 3, 8, 8, generator=generator), size=IMAGE_SIZE, mode="bilinear")[0] * 2 - 1
        centre = torch.rand(2, generator=generator) * 24 + 20
        ys, xs = torch.meshgrid(torch.arange(IMAGE_SIZE), torch.arange(IMAGE_SIZE), indexing="ij")
        mask = (((xs - centre[0]) ** 2 + (ys - centre[1]) ** 2) < 14**2).float()[None]
        hint = torch.rand(9, 1, 1, generator=generator) * mask
        embedding = torch.randn(1, EMBED_DIM, generator=generator)
        return {
            "pixel_values": image,
            "clip_pixel_values": torch.randn(1, 3, CLIP_SIZE, CLIP_SIZE, generator=generator),
            "face_embeds": embedding / embedding.norm(),
            "face_mask": mask,
            "hint": hint,
            "caption": CAPTIONS[index % len(CAPTIONS)],
            "key": f"record{index:03d}",
        }

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 7919 + self.epoch)
        for index in torch.randperm(self.count, generator=generator).tolist():
            record = self.record(index)
            record["drop_identity"] = bool(torch.rand(1, generator=generator) < self.drop_identity)
            record["drop_hint"] = bool(torch.rand(1, generator=generator) < self.drop_hint)
            yield record


def collate(records: list[dict]) -> dict:
    batch = {key: torch.stack([r[key] for r in records]) for key in ("pixel_values", "clip_pixel_values", "face_embeds", "face_mask", "hint")}
    batch["caption"] = [r["caption"] for r in records]
    batch["key"] = [r["key"] for r in records]
    for key in ("drop_identity", "drop_hint"):
        batch[key] = torch.tensor([r[key] for r in records])
    return batch


def validation_batch() -> dict:
    records = [SyntheticRecords().record(index) for index in (0, 1)]
    return collate([{**record, "drop_identity": False, "drop_hint": False} for record in records])


class LossRecorder(pl.Callback):
    """Records (global_step, loss) after every optimiser step."""

    def __init__(self):
        self.losses: list[tuple[int, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append((trainer.global_step, float(outputs["loss"])))


def tiny_config(output_dir, **overrides):
    values = {
        "training.output_dir": str(output_dir),
        "training.max_steps": 5,
        "training.checkpoint_every": 2,
        "training.validation.every_n_steps": 0,
        "training.log_every_n_steps": 1,
        **overrides,
    }
    return load_train_config("configs/tiny_train.yaml", [f"{key}={value}" for key, value in values.items()])


def run(config, backbone, recorder=None):
    # 10 records, batch 4 (drop_last): 2 batches per epoch, so 5 steps cross 2 epoch boundaries.
    datasets = (SyntheticRecords(), collate, validation_batch())
    return train(config, datasets=datasets, extra_callbacks=[recorder] if recorder else [], backbone=backbone, command="pytest")


def test_resume_continues_with_exactly_the_same_losses(tmp_path, tiny_backbone):
    full_recorder = LossRecorder()
    full = run(tiny_config(tmp_path / "full"), tiny_backbone, full_recorder)

    first_recorder = LossRecorder()
    # Stops at 3 with checkpoints every 2: the resume starts from the final save, mid-epoch.
    run(tiny_config(tmp_path / "split", **{"training.max_steps": 3}), tiny_backbone, first_recorder)
    assert torch.load(tmp_path / "split" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3
    second_recorder = LossRecorder()
    resumed = run(tiny_config(tmp_path / "split", **{"training.resume": "last"}), tiny_backbone, second_recorder)

    assert [step for step, _ in full_recorder.losses] == [1, 2, 3, 4, 5]
    assert first_recorder.losses + second_recorder.losses == full_recorder.losses
    # The losses must differ between steps, or equality above would prove little.
    assert len({loss for _, loss in full_recorder.losses}) == 5
    for (name, a), (_, b) in zip(full.adapter.state_dict().items(), resumed.adapter.state_dict().items()):
        assert torch.equal(a, b), name
    # The EMA (on in tiny_train.yaml) was restored too: both exports are identical.
    from caphuman.models.adapter import CapHumanAdapter

    exported_full = CapHumanAdapter.from_pretrained(tmp_path / "full" / "adapter").state_dict()
    exported_resumed = CapHumanAdapter.from_pretrained(tmp_path / "split" / "adapter").state_dict()
    assert all(torch.equal(exported_full[k], exported_resumed[k]) for k in exported_full)
    assert not torch.equal(exported_full["capface.controlnet_mid_block.weight"], full.adapter.state_dict()["capface.controlnet_mid_block.weight"])


def test_loss_matches_an_independent_computation_including_the_mask_term(tiny_backbone):
    """Recompute one batch's loss by hand (closed-form noising, manual projections)."""
    from caphuman.loading import load_adapter
    from caphuman.config import CapHumanConfig
    from caphuman.training.module import CapHumanTrainingModule, step_generator

    config = tiny_config("unused", **{"training.mask_loss_weight": 0.7})
    adapter = load_adapter(CapHumanConfig(model=config.model), tiny_backbone, "checkpoints")
    # Non-zero zero-convs and mask head, so every path of the loss carries signal.
    with torch.no_grad():
        torch.manual_seed(3)
        for parameter in adapter.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    module = CapHumanTrainingModule(config, tiny_backbone, adapter)
    dataset = SyntheticRecords(drop_identity=0.5, drop_hint=0.5)
    records = list(dataset)[:4]
    records[0]["drop_hint"], records[1]["drop_hint"] = True, False
    records[0]["drop_identity"], records[1]["drop_identity"] = False, True
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
        gate = (out.face_mask > 0.5).float()
        down = [r * (gate if r.shape[-1] == gate.shape[-1] else F.interpolate(out.face_mask, size=r.shape[-2:], mode="bilinear", antialias=True).gt(0.5).float()) for r in out.down_block_res_samples]
        mid = out.mid_block_res_sample * F.interpolate(out.face_mask, size=out.mid_block_res_sample.shape[-2:], mode="bilinear", antialias=True).gt(0.5).float()
        pred = unet(noisy, timesteps, encoder_hidden_states=text, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
        noise_loss = ((pred - noise) ** 2).mean()
        # Target mask: 8x8 block averages of the 64 px mask; only samples whose hint was kept.
        target = batch["face_mask"].unflatten(2, (8, 8)).unflatten(4, (8, 8)).mean(dim=(3, 5))
        kept = ~batch["drop_hint"]
        mask_loss = ((out.face_mask - target) ** 2)[kept].mean()

    assert mask_loss > 1e-3  # the mask term is there and not negligible
    torch.testing.assert_close(terms.noise, noise_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(terms.mask, mask_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(terms.total, noise_loss + 0.7 * mask_loss, rtol=1e-5, atol=1e-6)


def test_only_capface_and_identity_params_train_and_export_samples_match(tmp_path, tiny_backbone):
    from caphuman.conditions.identity import IdentityInputs
    from caphuman.config import load_config
    from caphuman.loading import build_pipeline
    from caphuman.pipeline import CapHumanPipeline
    from caphuman.schedulers import make_scheduler
    from caphuman.training.callbacks import find_ema

    frozen_before = {
        name: {k: v.clone() for k, v in module.state_dict().items()} for name, module in tiny_backbone.modules().items()
    }
    config = tiny_config(tmp_path / "run", **{"training.max_steps": 4, "training.validation.every_n_steps": 2})
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

    # Sampling through caphuman.loading with the export == sampling with the in-memory EMA weights.
    identity = IdentityInputs(validation_batch()["face_embeds"][:1], validation_batch()["clip_pixel_values"][:1])
    hint = validation_batch()["hint"][:1]
    sample_config = load_config(tmp_path / "run" / "adapter" / "sample_config.yaml")
    exported = build_pipeline(sample_config, weights_dir=tmp_path, device="cpu", with_recognizer=False)
    exported.set_progress_bar_config(disable=True)
    kwargs = dict(identity=identity, num_inference_steps=3, output_type="np")
    from_export = exported("a photo of a person", hint, generator=torch.Generator().manual_seed(0), **kwargs).images

    ema = find_ema(module.trainer)
    with ema.applied(module.adapter):
        in_memory = CapHumanPipeline(
            vae=tiny_backbone.vae, text_encoder=tiny_backbone.text_encoder, tokenizer=tiny_backbone.tokenizer,
            unet=tiny_backbone.unet, capface=module.adapter.capface.eval(), identity_encoder=module.adapter.identity_encoder,
            image_encoder=tiny_backbone.image_encoder, image_processor=tiny_backbone.image_processor,
            scheduler=make_scheduler("ddim", tiny_backbone.scheduler_config),
        )
        in_memory.set_progress_bar_config(disable=True)
        from_memory = in_memory("a photo of a person", hint, generator=torch.Generator().manual_seed(0), **kwargs).images
    assert from_export.shape == (1, IMAGE_SIZE, IMAGE_SIZE, 3) and all(math.isfinite(v) for v in from_export.ravel()[:100])
    # The exported weights are bit-identical to the in-memory EMA weights ...
    from caphuman.models.adapter import CapHumanAdapter

    exported_state = CapHumanAdapter.from_pretrained(tmp_path / "run" / "adapter").state_dict()
    with ema.applied(module.adapter):
        in_memory_state = {k: v.clone() for k, v in module.adapter.state_dict().items()}
    assert all(torch.equal(exported_state[k], in_memory_state[k]) for k in in_memory_state)
    # ... and the images agree to float32 rounding (kernels may pick other paths for loaded tensors).
    np.testing.assert_allclose(from_export, from_memory, atol=1e-5, rtol=0)
    assert from_export.std() > 0.01  # not a constant image


def test_bad_training_config_values_name_the_key(tmp_path):
    from caphuman.errors import ConfigError

    with pytest.raises(ConfigError, match="training.optimizer.lr"):
        tiny_config(tmp_path, **{"training.optimizer.lr": -1})
    with pytest.raises(ConfigError, match="training.strategy"):
        tiny_config(tmp_path, **{"training.strategy": "horovod"})
