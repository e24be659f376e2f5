"""The CapHuman sampler.

Per denoising step: CapFace reads the noisy latents, the identity tokens and the 9-channel
hint, and returns 13 residuals plus a face mask; the residuals (times the strength, gated by
mask > 0.5) are added to the frozen UNet's middle block and decoder skips, while the UNet's own
cross-attention sees only the text. Classifier-free guidance is on the text: the negative branch
keeps the identity tokens and hint, so CapFace's output is the same for both branches and is
computed once per step.

An optional second branch, ``body_controlnet`` (the official OpenPose ControlNet), reads a pose map
(body, hands, face dots; caphuman/body/) with each guidance branch's TEXT embeddings, as in
ControlNet; its residuals, times ``body_control_strength``, are added to CapFace's without the face
mask gate. At strength 0 (the published default) or without a map it is not run at all.

Several people (``people=[PersonCondition, ...]``): one CapFace pass per person with that
person's identity tokens and hint; each pass is gated by its own predicted face mask and the
gated residuals are summed (see caphuman.conditions.people).

The call follows diffusers' StableDiffusionPipeline: precomputed ``prompt_embeds`` /
``negative_prompt_embeds`` (from :meth:`CapHumanPipeline.encode_prompt`) instead of prompts,
precomputed ``identity_embeds`` (from :meth:`CapHumanPipeline.encode_identity`) instead of
reference faces, ``callback_on_step_end`` and ``return_dict``. The components are named as in
diffusers: ``feature_extractor`` is CLIP's image processor (reference face -> CLIP input) and
``image_processor`` the VAE's (decoded tensors -> PIL / numpy).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, ControlNetModel, DiffusionPipeline, UNet2DConditionModel
from diffusers.image_processor import VaeImageProcessor
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPImageProcessor, CLIPTextModel, CLIPTokenizer, CLIPVisionModel

from caphuman.conditions.hint_layout import check_hint
from caphuman.conditions.identity import IdentityInputs, ReferenceFace, identity_tokens, prepare_identity_inputs
from caphuman.conditions.people import PersonCondition
from caphuman.conditions.text import encode_prompts
from caphuman.config import REFERENCE_FUSIONS
from caphuman.faces.recognizer import FaceRecognizer
from caphuman.models.capface import CapFaceModel
from caphuman.models.identity_encoder import IdentityEncoder
from caphuman.schedulers import SCHEDULERS, make_scheduler

logger = logging.getLogger(__name__)


@dataclass
class CapHumanPipelineOutput(BaseOutput):
    """Attributes:
    images: PIL images, or an array (N, H, W, 3) in [0, 1] for output_type "np", or latents.
    face_masks: (N, 1, H/8, W/8) CapFace's predicted face mask at the last step (several people:
        the union, i.e. the per-pixel maximum, of their masks).
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    face_masks: torch.Tensor


# What a step-end callback may receive and replace (see CapHumanPipeline.__call__).
StepEndCallback = Callable[[DiffusionPipeline, int, torch.Tensor, dict[str, Any]], dict[str, Any] | None]


class CapHumanPipeline(DiffusionPipeline):
    """Text + identity + 3D head condition -> images. See the module docstring.

    Optional components: ``face_recognizer`` (only reference faces need it; precomputed
    ``identity`` inputs or ``identity_embeds`` do not) and ``body_controlnet`` (the OpenPose branch).
    """

    model_cpu_offload_seq = "text_encoder->image_encoder->identity_encoder->capface->body_controlnet->unet->vae"
    _optional_components = ["face_recognizer", "body_controlnet"]
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds"]

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel,
        capface: CapFaceModel,
        identity_encoder: IdentityEncoder,
        image_encoder: CLIPVisionModel,
        feature_extractor: CLIPImageProcessor,
        scheduler: SchedulerMixin,
        face_recognizer: FaceRecognizer | None = None,
        body_controlnet: ControlNetModel | None = None,
    ):
        super().__init__()
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            capface=capface,
            identity_encoder=identity_encoder,
            image_encoder=image_encoder,
            feature_extractor=feature_extractor,
            scheduler=scheduler,
            face_recognizer=face_recognizer,
            body_controlnet=body_controlnet,
        )
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)

    def set_scheduler(self, name: str) -> None:
        """Swap the sampler by name (see caphuman.schedulers.SCHEDULERS), keeping the noise schedule."""
        self.scheduler = make_scheduler(name, dict(self.scheduler.config))

    # 1. inputs ------------------------------------------------------------------------------
    def check_inputs(
        self,
        prompts: list[str] | None,
        negative_prompts: list[str] | None,
        prompt_embeds: torch.Tensor | None,
        negative_prompt_embeds: torch.Tensor | None,
        people: list[PersonCondition],
        height: int,
        width: int,
        num_inference_steps: int,
        guidance_scale: float,
        identity_guidance_scale: float | None,
        capface_strength: float,
        reference_fusion: str,
        tau: int,
        callback_on_step_end_tensor_inputs: list[str],
    ) -> None:
        """ValueErrors naming the problem; ``prompts`` / ``negative_prompts`` are lists (or None
        where embeddings replace them), as __call__ normalises them."""
        if prompts is not None and prompt_embeds is not None:
            raise ValueError("Pass either `prompt` or `prompt_embeds`, not both.")
        if prompts is None and prompt_embeds is None:
            raise ValueError("Pass `prompt` (a string or a list) or precomputed `prompt_embeds`.")
        if negative_prompts is not None and negative_prompt_embeds is not None:
            raise ValueError("Pass either `negative_prompt` or `negative_prompt_embeds`, not both.")
        if prompts is not None and (not prompts or not all(isinstance(p, str) for p in prompts)):
            raise ValueError("prompt must be a string or a non-empty list of strings.")
        if prompt_embeds is not None and (not isinstance(prompt_embeds, torch.Tensor) or prompt_embeds.ndim != 3):
            raise ValueError(f"prompt_embeds must be a (B, T, D) tensor, got {_describe(prompt_embeds)}.")
        batch = len(prompts) if prompts is not None else prompt_embeds.shape[0]
        if negative_prompts is not None and len(negative_prompts) != batch:
            raise ValueError(f"{len(negative_prompts)} negative prompts for {batch} prompts; give one or one per prompt.")
        if negative_prompt_embeds is not None:
            if not isinstance(negative_prompt_embeds, torch.Tensor) or negative_prompt_embeds.ndim != 3:
                raise ValueError(f"negative_prompt_embeds must be a (B, T, D) tensor, got {_describe(negative_prompt_embeds)}.")
            if negative_prompt_embeds.shape[0] != batch or (prompt_embeds is not None and negative_prompt_embeds.shape != prompt_embeds.shape):
                raise ValueError(
                    f"negative_prompt_embeds {tuple(negative_prompt_embeds.shape)} must match the prompts "
                    f"({batch} of them{'' if prompt_embeds is None else ', prompt_embeds ' + str(tuple(prompt_embeds.shape))})."
                )
        for person in people:
            sources = [person.references is not None, person.identity is not None, person.identity_embeds is not None]
            if sum(sources) != 1:
                raise ValueError(
                    "Pass exactly one of `references` (reference faces), `identity` (precomputed IdentityInputs) "
                    "or `identity_embeds` (precomputed identity tokens, see encode_identity)."
                )
            if person.references is not None and self.face_recognizer is None:
                raise ValueError("This pipeline has no face recogniser; pass precomputed `identity` inputs instead of `references`.")
            if person.identity_embeds is not None:
                self.check_identity_embeds(person.identity_embeds, batch)
            check_hint(person.hint, batch, height, width)
        if height % 8 or width % 8 or height <= 0 or width <= 0:
            raise ValueError(f"height and width must be positive multiples of 8, got {height}x{width}.")
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}.")
        if guidance_scale < 0 or (identity_guidance_scale is not None and identity_guidance_scale < 0):
            raise ValueError("guidance scales must be >= 0.")
        if capface_strength < 0:
            raise ValueError(f"capface_strength must be >= 0, got {capface_strength}.")
        if reference_fusion not in REFERENCE_FUSIONS:
            raise ValueError(f"reference_fusion must be one of {REFERENCE_FUSIONS}, got '{reference_fusion}'.")
        if not 0 <= tau <= self.scheduler.config.num_train_timesteps:
            raise ValueError(f"tau must be a timestep in [0, {self.scheduler.config.num_train_timesteps}], got {tau}.")
        unknown = [name for name in callback_on_step_end_tensor_inputs if name not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(f"callback_on_step_end_tensor_inputs may name {self._callback_tensor_inputs}, got {unknown}.")

    def check_identity_embeds(self, identity_embeds: torch.Tensor, batch: int) -> None:
        """Precomputed identity tokens must be (1 or batch, T, D) with the identity encoder's D."""
        if not isinstance(identity_embeds, torch.Tensor) or identity_embeds.ndim != 3:
            raise ValueError(f"identity_embeds must be a (B, T, D) tensor from encode_identity, got {_describe(identity_embeds)}.")
        if identity_embeds.shape[0] not in (1, batch):
            raise ValueError(f"identity_embeds has batch {identity_embeds.shape[0]} for {batch} prompts; pass 1 or one per prompt.")
        expected = self.identity_encoder.config.cross_attention_dim
        if identity_embeds.shape[-1] != expected:
            raise ValueError(f"identity_embeds are {identity_embeds.shape[-1]}-d but CapFace reads {expected}-d identity tokens.")

    # 2. conditions --------------------------------------------------------------------------
    def encode_prompt(
        self,
        prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        do_classifier_free_guidance: bool = True,
        negative_prompt: str | list[str] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Text embeddings for the UNet, as diffusers' ``StableDiffusionPipeline.encode_prompt``.

        Embeddings passed in are used as given (moved to the execution device and the text
        encoder's dtype); missing ones are encoded from the prompts (negative default ""). Both
        are repeated per image (num_images_per_prompt); the negative ones are None without guidance.

        Returns:
            (prompt_embeds, negative_prompt_embeds), each (B * num_images_per_prompt, T, D).
        """
        if prompt_embeds is None:
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            prompt_embeds = encode_prompts(prompts, self.tokenizer, self.text_encoder)
        else:
            prompt_embeds = prompt_embeds.to(device=self._execution_device, dtype=self.text_encoder.dtype)
        batch = prompt_embeds.shape[0]
        if not do_classifier_free_guidance:
            negative_prompt_embeds = None
        elif negative_prompt_embeds is None:
            negative_prompt = "" if negative_prompt is None else negative_prompt
            negative_prompts = [negative_prompt] * batch if isinstance(negative_prompt, str) else list(negative_prompt)
            negative_prompt_embeds = encode_prompts(negative_prompts, self.tokenizer, self.text_encoder)
        else:
            negative_prompt_embeds = negative_prompt_embeds.to(device=self._execution_device, dtype=self.text_encoder.dtype)
        # Repeated per image the way diffusers repeats prompt embeddings (prompt-major order).
        prompt_embeds = prompt_embeds.repeat_interleave(num_images_per_prompt, 0)
        if negative_prompt_embeds is not None:
            negative_prompt_embeds = negative_prompt_embeds.repeat_interleave(num_images_per_prompt, 0)
        return prompt_embeds, negative_prompt_embeds

    def encode_identity(
        self,
        references: list[ReferenceFace] | None = None,
        identity: IdentityInputs | None = None,
        batch_size: int = 1,
        fusion: str = "mean",
    ) -> torch.Tensor:
        """(batch_size, T, D) identity tokens from reference faces or precomputed inputs: what
        ``identity_embeds`` takes (with ``reference_fusion`` = ``fusion``)."""
        if (references is None) == (identity is None):
            raise ValueError("encode_identity needs exactly one of `references` or `identity`.")
        if references is not None:
            identity = prepare_identity_inputs(references, self.face_recognizer, self.feature_extractor)
        expected = self.identity_encoder.config.face_embedding_dim
        if identity.face_embeds.shape[-1] != expected:
            raise ValueError(f"face embeddings are {identity.face_embeds.shape[-1]}-d but the identity encoder expects {expected}-d.")
        return identity_tokens(identity.repeat(batch_size), self.image_encoder, self.identity_encoder, fusion)

    def prepare_identity_embeds(self, person: PersonCondition, batch_size: int, num_images_per_prompt: int, fusion: str) -> torch.Tensor:
        """One person's identity tokens for every image: (batch_size * num_images_per_prompt, T, D)
        in CapFace's dtype, computed (encode_identity) or precomputed (``identity_embeds``)."""
        if person.identity_embeds is None:
            tokens = self.encode_identity(person.references, person.identity, batch_size, fusion)
        else:
            tokens = person.identity_embeds.to(self._execution_device).expand(batch_size, -1, -1)
        return tokens.to(self.capface.dtype).repeat_interleave(num_images_per_prompt, 0)

    def prepare_latents(self, shape: tuple[int, ...], generator, latents: torch.Tensor | None) -> torch.Tensor:
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=self._execution_device, dtype=self.unet.dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}.")
        return latents.to(self._execution_device, self.unet.dtype) * self.scheduler.init_noise_sigma

    def _scheduler_step_kwargs(self, generator, eta: float) -> dict:
        accepted = set(inspect.signature(self.scheduler.step).parameters)
        kwargs = {}
        if "eta" in accepted:
            kwargs["eta"] = eta
        if "generator" in accepted:
            kwargs["generator"] = generator
        return kwargs

    # 3. one denoising step ------------------------------------------------------------------
    def predict_noise(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        text_embeds: torch.Tensor,
        negative_embeds: torch.Tensor | None,
        id_tokens: torch.Tensor,
        hint: torch.Tensor,
        guidance_scale: float,
        identity_guidance_scale: float | None,
        capface_strength: float,
        mask_gating: bool,
        body_map: torch.Tensor | None = None,
        body_control_strength: float = 0.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Guided noise prediction for (N, 4, h, w) latents; returns (noise, face_mask).

        ``body_map`` (N, 3, H, W) in [0, 1] feeds the optional OpenPose ControlNet (see the module
        docstring); it is skipped when None or at strength 0."""
        model_input = self.scheduler.scale_model_input(latents, timestep)
        down, mid, face_mask = self.capface_residuals(model_input, timestep, id_tokens, hint, capface_strength, mask_gating)
        use_body = body_map is not None and body_control_strength != 0 and self.body_controlnet is not None

        if negative_embeds is None:  # no guidance: a single branch
            if use_body:
                down, mid = add_residuals(
                    (down, mid), self.body_control_residuals(model_input, timestep, text_embeds, body_map, body_control_strength)
                )
            noise = self.unet(
                model_input,
                timestep,
                encoder_hidden_states=text_embeds,
                down_block_additional_residuals=down,
                mid_block_additional_residual=mid,
                return_dict=False,
            )[0]
            return noise, face_mask

        branches_text = [negative_embeds, text_embeds]
        branches_down, branches_mid = [down, down], [mid, mid]
        if identity_guidance_scale is not None:
            # A third branch without identity: negative text and zeroed identity tokens.
            down_no_id, mid_no_id, _ = self.capface_residuals(
                model_input, timestep, zeros_like_tokens(id_tokens), hint, capface_strength, mask_gating
            )
            branches_text.insert(0, negative_embeds)
            branches_down.insert(0, down_no_id)
            branches_mid.insert(0, mid_no_id)
        count = len(branches_text)
        all_down = None if down is None else [torch.cat(parts) for parts in zip(*branches_down, strict=True)]
        all_mid = None if mid is None else torch.cat(branches_mid)
        if use_body:
            # The ControlNet sees each branch's own text (negative text in the unconditional ones).
            body = self.body_control_residuals(
                torch.cat([model_input] * count),
                timestep,
                torch.cat(branches_text),
                torch.cat([body_map] * count),
                body_control_strength,
            )
            all_down, all_mid = add_residuals((all_down, all_mid), body)
        noise = self.unet(
            torch.cat([model_input] * count),
            timestep,
            encoder_hidden_states=torch.cat(branches_text),
            down_block_additional_residuals=all_down,
            mid_block_additional_residual=all_mid,
            return_dict=False,
        )[0].chunk(count)
        if identity_guidance_scale is None:
            uncond, cond = noise
            guided = uncond + guidance_scale * (cond - uncond)
        else:
            no_identity, identity_only, cond = noise
            guided = no_identity + identity_guidance_scale * (identity_only - no_identity) + guidance_scale * (cond - identity_only)
        return guided, face_mask

    def capface_residuals(
        self,
        model_input: torch.Tensor,
        timestep: torch.Tensor,
        id_tokens: torch.Tensor | list[torch.Tensor],
        hint: torch.Tensor | list[torch.Tensor],
        strength: float,
        mask_gating: bool,
    ) -> tuple[list[torch.Tensor] | None, torch.Tensor | None, torch.Tensor]:
        """CapFace's gated, scaled residuals and face mask; at strength 0 CapFace is skipped
        (its residuals would all be multiplied by 0) and the mask is returned as zeros.

        ``id_tokens`` and ``hint`` may be lists (one entry per person): then CapFace runs once per
        person, each pass gated by its own mask, and the residuals are summed."""
        if strength == 0:
            batch, _, height, width = model_input.shape
            return None, None, model_input.new_zeros(batch, 1, height, width)
        if isinstance(id_tokens, (list, tuple)):
            return self.people_residuals(model_input, timestep, list(id_tokens), list(hint), strength, mask_gating)
        output = self.capface(model_input, timestep, id_tokens, hint)
        down, mid = output.gated_residuals(strength, mask_gating)
        return down, mid, output.face_mask

    def body_control_residuals(
        self,
        model_input: torch.Tensor,
        timestep: torch.Tensor,
        text_embeds: torch.Tensor,
        body_map: torch.Tensor,
        strength: float,
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The OpenPose ControlNet's residuals times ``strength`` (not guess mode, no mask gate),
        for (N, 4, h, w) inputs, (N, T, D) text and an (N, 3, H, W) map in [0, 1]."""
        down, mid = self.body_controlnet(
            model_input.to(self.body_controlnet.dtype),
            timestep,
            encoder_hidden_states=text_embeds.to(self.body_controlnet.dtype),
            controlnet_cond=body_map.to(self.body_controlnet.dtype),
            conditioning_scale=float(strength),
            return_dict=False,
        )
        return list(down), mid

    def prepare_body_map(self, body_map, batch: int, height: int, width: int) -> torch.Tensor:
        """A pose map as an (N, 3, H, W) tensor in [0, 1] on the execution device.

        Accepts a PIL image, an (H, W, 3) uint8 array, or a float tensor (3, H, W) / (1 or B, 3, H, W)
        already in [0, 1] (B = prompts; repeated per image by the caller)."""
        if isinstance(body_map, PIL.Image.Image):
            body_map = np.asarray(body_map.convert("RGB"))
        if isinstance(body_map, np.ndarray):
            if body_map.dtype != np.uint8 or body_map.ndim != 3 or body_map.shape[2] != 3:
                raise ValueError(f"body_map as an array must be (H, W, 3) uint8, got {body_map.dtype} {body_map.shape}.")
            body_map = torch.from_numpy(np.array(body_map)).permute(2, 0, 1).float() / 255.0
        if not isinstance(body_map, torch.Tensor):
            raise ValueError(f"body_map must be a PIL image, a uint8 array or a tensor, got {type(body_map).__name__}.")
        if body_map.ndim == 3:
            body_map = body_map[None]
        if body_map.ndim != 4 or body_map.shape[1] != 3 or body_map.shape[0] not in (1, batch):
            raise ValueError(f"body_map must be (3, H, W), (1, 3, H, W) or ({batch}, 3, H, W), got {tuple(body_map.shape)}.")
        if tuple(body_map.shape[-2:]) != (height, width):
            raise ValueError(f"body_map is {body_map.shape[-2]}x{body_map.shape[-1]} but the image is {height}x{width}.")
        return body_map.expand(batch, -1, -1, -1).to(self._execution_device, self.body_controlnet.dtype)

    def people_residuals(
        self,
        model_input: torch.Tensor,
        timestep: torch.Tensor,
        id_tokens: list[torch.Tensor],
        hints: list[torch.Tensor],
        strength: float,
        mask_gating: bool,
    ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """Sum over people of each person's own gated residuals; the mask is their union."""
        down_sum, mid_sum, mask_union = None, None, None
        for tokens, person_hint in zip(id_tokens, hints, strict=True):
            down, mid, mask = self.capface_residuals(model_input, timestep, tokens, person_hint, strength, mask_gating)
            if down_sum is None:
                down_sum, mid_sum, mask_union = down, mid, mask
            else:
                down_sum = [total + residual for total, residual in zip(down_sum, down, strict=True)]
                mid_sum, mask_union = mid_sum + mid, torch.maximum(mask_union, mask)
        return down_sum, mid_sum, mask_union

    # 4. decode -------------------------------------------------------------------------------
    def decode_latents(self, latents: torch.Tensor, generator=None) -> torch.Tensor:
        """(N, 4, h, w) latents -> (N, 3, H, W) images in [-1, 1].

        A float16 VAE can overflow in its up-blocks and return inf/NaN (the SDXL VAE does so
        routinely, SD 1.5's rarely). Decoding stays in float16, the fast path; only when the
        result is not finite are the latents decoded again with the VAE upcast to float32 for
        that call (diffusers' ``force_upcast`` does so always; this pays only when needed, for
        one check after the loop).
        """
        scaled = latents / self.vae.config.scaling_factor
        decoded = self.vae.decode(scaled.to(self.vae.dtype), return_dict=False, generator=generator)[0]
        if self.vae.dtype == torch.float16 and not torch.isfinite(decoded).all():
            logger.info("float16 VAE decode overflowed; decoding again in float32.")
            self.vae.to(torch.float32)
            try:
                decoded = self.vae.decode(scaled.float(), return_dict=False, generator=generator)[0]
            finally:
                self.vae.to(torch.float16)
        return decoded

    # 5. the loop ----------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        hint: torch.Tensor | None = None,
        references: list[ReferenceFace] | None = None,
        identity: IdentityInputs | None = None,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        num_inference_steps: int = 20,
        guidance_scale: float = 7.0,
        identity_guidance_scale: float | None = None,
        capface_strength: float = 1.0,
        mask_gating: bool = True,
        tau: int = 0,
        eta: float = 0.0,
        reference_fusion: str = "mean",
        height: int | None = None,
        width: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        identity_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: StepEndCallback | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        body_map: PIL.Image.Image | np.ndarray | torch.Tensor | None = None,
        body_control_strength: float = 0.0,
        people: list[PersonCondition] | None = None,
    ) -> CapHumanPipelineOutput | tuple:
        """Generate images.

        Args:
            prompt: one prompt or a list (batch B), or
            prompt_embeds: precomputed (B, T, D) text embeddings (see :meth:`encode_prompt`).
            hint: (9, H, W), (1, 9, H, W) or (B, 9, H, W) head condition at the image size.
            references: reference faces of one identity (cropped by caphuman.faces), or
            identity: precomputed :class:`IdentityInputs` (B = 1 or B), or
            identity_embeds: precomputed (1 or B, T, D) identity tokens (see :meth:`encode_identity`).
            negative_prompt: default "" (as published), or
            negative_prompt_embeds: precomputed, shaped as ``prompt_embeds``.
            num_images_per_prompt: images per prompt (N = B * num_images_per_prompt).
            num_inference_steps, guidance_scale, eta: sampler settings (published: 20, 7.0, 0).
            identity_guidance_scale: extra guidance on the identity tokens (None: off, as published).
            capface_strength: scale of every CapFace residual (published 1.0; 0 gives plain SD).
            mask_gating: multiply CapFace residuals by (predicted face mask > 0.5).
            tau: identity tokens are zeroed while the timestep is above tau (0: off).
            reference_fusion: "mean" or "concat" for several reference photos.
            height, width: image size; default: the hint's size.
            generator: torch.Generator(s) for reproducible latents.
            output_type: "pil", "np", "pt" or "latent".
            return_dict: False returns the tuple (images, face_masks).
            callback_on_step_end: as in diffusers, called after each step as
                ``callback(pipe, step_index, timestep, callback_kwargs)`` with the tensors named in
                ``callback_on_step_end_tensor_inputs`` (default ["latents"]; any of
                ``_callback_tensor_inputs``); a returned dict replaces those tensors (e.g. latents).
            body_map: pose map for the optional OpenPose ControlNet (caphuman.body.draw_openpose_map):
                a PIL image or (H, W, 3) uint8 array, or a tensor in [0, 1] of shape (3, H, W),
                (1, 3, H, W) or (B, 3, H, W).
            body_control_strength: scale of the OpenPose ControlNet's residuals (published default 0: off).
            people: several people instead of ``hint`` + ``references``/``identity``/``identity_embeds``:
                one :class:`PersonCondition` each (their hints on the full canvas); one CapFace pass
                per person, gated by its own mask, residuals summed. One person equals the
                single-person call.
        Returns:
            :class:`CapHumanPipelineOutput`, or (images, face_masks) when ``return_dict`` is False.
        """
        prompts = None if prompt is None else [prompt] if isinstance(prompt, str) else list(prompt)
        batch_prompts = len(prompts) if prompts is not None else len(prompt_embeds) if isinstance(prompt_embeds, torch.Tensor) else 0
        negative_prompts = None
        if negative_prompt is not None:
            negative_prompts = [negative_prompt] * batch_prompts if isinstance(negative_prompt, str) else list(negative_prompt)
        elif negative_prompt_embeds is None and prompts is not None:
            negative_prompts = [""] * len(prompts)
        if callback_on_step_end_tensor_inputs is None:
            callback_on_step_end_tensor_inputs = ["latents"]
        if people is None:
            people = [PersonCondition(hint=hint, references=references, identity=identity, identity_embeds=identity_embeds)]
        elif hint is not None or references is not None or identity is not None or identity_embeds is not None:
            raise ValueError("Pass either `people` or `hint` with `references`/`identity`/`identity_embeds`, not both.")
        elif not people or not all(isinstance(person, PersonCondition) for person in people):
            raise ValueError("`people` must be a non-empty list of PersonCondition.")
        if isinstance(people[0].hint, torch.Tensor):
            height = people[0].hint.shape[-2] if height is None else height
            width = people[0].hint.shape[-1] if width is None else width
        self.check_inputs(
            prompts,
            negative_prompts,
            prompt_embeds,
            negative_prompt_embeds,
            people,
            height,
            width,
            num_inference_steps,
            guidance_scale,
            identity_guidance_scale,
            capface_strength,
            reference_fusion,
            tau,
            callback_on_step_end_tensor_inputs,
        )
        if body_control_strength < 0:
            raise ValueError(f"body_control_strength must be >= 0, got {body_control_strength}.")
        use_body = body_map is not None and body_control_strength != 0
        if use_body and self.body_controlnet is None:
            raise ValueError("body_control_strength > 0 needs a pipeline with a body_controlnet (the OpenPose ControlNet).")
        device = self._execution_device
        batch = batch_prompts * num_images_per_prompt
        # As the published DDIM sampler: guidance runs for any scale but exactly 1 (below 1 too).
        do_guidance = guidance_scale != 1.0 or identity_guidance_scale is not None

        # Conditions, repeated per image the way diffusers repeats prompt embeddings.
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompts, num_images_per_prompt, do_guidance, negative_prompts, prompt_embeds, negative_prompt_embeds
        )
        body_map = self.prepare_body_map(body_map, batch_prompts, height, width).repeat_interleave(num_images_per_prompt, 0) if use_body else None

        id_tokens = [self.prepare_identity_embeds(person, batch_prompts, num_images_per_prompt, reference_fusion) for person in people]
        hint = [
            check_hint(person.hint, batch_prompts, height, width).to(device, self.capface.dtype).repeat_interleave(num_images_per_prompt, 0)
            for person in people
        ]
        if len(people) == 1:  # one person: exactly the single-person path
            id_tokens, hint = id_tokens[0], hint[0]

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        shape = (batch, self.unet.config.in_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
        latents = self.prepare_latents(shape, generator, latents)
        step_kwargs = self._scheduler_step_kwargs(generator, eta)

        face_mask = None
        zero_tokens = zeros_like_tokens(id_tokens)
        # tau: the published model drops identity tokens at early (noisy) steps. Decided here on
        # the host, once: `int(timestep) > tau` inside the loop would wait for the GPU every step.
        # The scheduler gets the same host copy: DDIM indexes its (CPU) alphas with the timestep,
        # and a CUDA tensor index would synchronise there too.
        host_timesteps = timesteps.cpu().tolist()
        drop_identity = [tau > 0 and value > tau for value in host_timesteps]
        with self.progress_bar(total=len(timesteps)) as progress:
            for index, timestep in enumerate(timesteps):
                step_tokens = zero_tokens if drop_identity[index] else id_tokens
                noise, face_mask = self.predict_noise(
                    latents,
                    timestep,
                    prompt_embeds,
                    negative_prompt_embeds,
                    step_tokens,
                    hint,
                    guidance_scale,
                    identity_guidance_scale,
                    capface_strength,
                    mask_gating,
                    body_map=body_map,
                    body_control_strength=body_control_strength,
                )
                latents = self.scheduler.step(noise, host_timesteps[index], latents, **step_kwargs, return_dict=False)[0]
                if callback_on_step_end is not None:
                    step_tensors = {"latents": latents, "prompt_embeds": prompt_embeds, "negative_prompt_embeds": negative_prompt_embeds}
                    callback_kwargs = {name: step_tensors[name] for name in callback_on_step_end_tensor_inputs}
                    replaced = callback_on_step_end(self, index, timestep, callback_kwargs) or {}
                    latents = replaced.pop("latents", latents)
                    prompt_embeds = replaced.pop("prompt_embeds", prompt_embeds)
                    negative_prompt_embeds = replaced.pop("negative_prompt_embeds", negative_prompt_embeds)
                progress.update()

        if output_type == "latent":
            images = latents
        else:
            decoded = self.decode_latents(latents, generator)
            images = self.image_processor.postprocess(decoded, output_type=output_type, do_denormalize=[True] * batch)
        self.maybe_free_model_hooks()
        if not return_dict:
            return images, face_mask
        return CapHumanPipelineOutput(images=images, face_masks=face_mask)


def _describe(value: Any) -> str:
    """A tensor's shape, or another value's type, for error messages."""
    return f"shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__


def add_residuals(
    first: tuple[list[torch.Tensor] | None, torch.Tensor | None], second: tuple[list[torch.Tensor], torch.Tensor]
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Sum two branches' (down residuals, mid residual), as diffusers' MultiControlNetModel does;
    a branch that was skipped (None) contributes nothing."""
    down, mid = first
    extra_down, extra_mid = second
    if down is None:
        return extra_down, extra_mid
    return [a + b for a, b in zip(down, extra_down, strict=True)], mid + extra_mid


def zeros_like_tokens(id_tokens: torch.Tensor | list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
    """Zeroed identity tokens, for one person (a tensor) or several (a list)."""
    if isinstance(id_tokens, (list, tuple)):
        return [torch.zeros_like(tokens) for tokens in id_tokens]
    return torch.zeros_like(id_tokens)


__all__ = ["CapHumanPipeline", "CapHumanPipelineOutput", "PersonCondition", "SCHEDULERS", "StepEndCallback"]
