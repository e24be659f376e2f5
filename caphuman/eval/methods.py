"""Methods the harness can compare, behind one hook: (request, context) -> one image per seed.

Built in (all on the same backbone and weights, so only the named difference changes):
- ``caphuman``: the full model: identity tokens + the head condition's 9-channel hint, CapFace
  strength and mask gating from the config (published: 1.0, gated).
- ``text-only``: plain Stable Diffusion: CapFace strength 0, so none of CapFace's residuals
  reach the UNet and neither identity nor head has any effect. (CapFace still runs and its
  output is multiplied by 0; that costs time, not correctness.)
- ``caphuman-no-head``: the head branch switched off while identity stays on. Strength 0 would
  not do: identity enters only through CapFace, so it would vanish too. Instead the hint is all
  zeros (no head shape, normals, albedo or shading), and mask gating is off, because the face
  mask is predicted from the hint and a zero hint would gate CapFace arbitrarily.

Add a method by decorating a function with :func:`register_method`, or pass
``--method package.module:function`` to the eval command; the function receives a
:class:`GenerationRequest` and the shared :class:`MethodContext` (which builds the pipeline, head
prior and reference crops on demand) and returns one PIL image per seed, in seed order.

Batches (``caphuman eval --batch-size``): a method registered with :func:`register_batch_method`
receives several requests of one identity at once (other prompts, conditions and seeds) and
makes all their images in one pipeline call; the built-in methods are such. Other methods are
called once per request.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from caphuman.conditions.hint_layout import HINT_CHANNELS
from caphuman.config import CapHumanConfig
from caphuman.errors import CapHumanError
from caphuman.eval.benchmark import HeadCondition, Identity, PromptSpec
from caphuman.head.params import HeadParams
from caphuman.session import CapHumanSession

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationRequest:
    """One (identity, prompt, head condition) and the seeds still to generate.

    Attributes:
        identity: whose photo to use; prompt: the template; prompt_text: with the subject filled in.
        condition: the requested head; seeds: one image per seed, returned in this order.
        height, width: image size in pixels (from the model config).
    """

    identity: Identity
    prompt: PromptSpec
    prompt_text: str
    condition: HeadCondition
    seeds: tuple[int, ...]
    height: int
    width: int


@dataclass
class PreparedIdentity:
    """A reference photo read once: the square-padded image, its face and its head.

    Attributes:
        image: (S, S, 3) uint8 RGB, the photo as the head prior sees it (squashed or padded to a
            square per ``head.photo_fit``, the frame of the generated images).
        face: the largest detected face.
        head: the head prior's reconstruction (B = 1).
    """

    image: np.ndarray
    face: object
    head: HeadParams


MethodFn = Callable[[GenerationRequest, "MethodContext"], list[Image.Image]]
# Several requests of ONE identity -> per request, one image per seed.
BatchMethodFn = Callable[[list[GenerationRequest], "MethodContext"], list[list[Image.Image]]]


@dataclass(frozen=True)
class MethodSpec:
    name: str
    generate: MethodFn
    description: str
    generate_batch: BatchMethodFn | None = None

    def generate_requests(self, requests: list[GenerationRequest], context: MethodContext) -> list[list[Image.Image]]:
        """Images of several requests of one identity: one call of a batch method, else one call per request."""
        if self.generate_batch is not None:
            return self.generate_batch(requests, context)
        return [self.generate(request, context) for request in requests]


METHODS: dict[str, MethodSpec] = {}


def register_method(name: str, description: str = "") -> Callable[[MethodFn], MethodFn]:
    """Decorator adding ``fn(request, context) -> list[PIL.Image]`` to the registry under ``name``."""

    def decorate(fn: MethodFn) -> MethodFn:
        METHODS[name] = MethodSpec(name, fn, description or (fn.__doc__ or name).strip().splitlines()[0])
        return fn

    return decorate


def register_batch_method(name: str, description: str) -> Callable[[BatchMethodFn], BatchMethodFn]:
    """Decorator adding ``fn(requests, context) -> [images per request]`` (requests of one
    identity) to the registry; single requests go through it as a batch of one."""

    def decorate(fn: BatchMethodFn) -> BatchMethodFn:
        def one(request: GenerationRequest, context: MethodContext) -> list[Image.Image]:
            return fn([request], context)[0]

        METHODS[name] = MethodSpec(name, one, description, generate_batch=fn)
        return fn

    return decorate


def check_hook_signature(name: str, fn) -> None:
    """A hook is called as ``fn(request, context)``; say so before any model loads, not with a
    TypeError after the first identity was prepared."""
    import inspect

    if not callable(fn):
        raise CapHumanError(f"Method hook '{name}' is not a function (got {type(fn).__name__}).")
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins have no signature to check
        return
    try:
        signature.bind(None, None)
    except TypeError:
        raise CapHumanError(f"Method hook '{name}' must take (request, context), but its signature is {signature}.") from None


def get_method(name: str) -> MethodSpec:
    """A registered method, or ``package.module:function`` imported as a hook.

    Raises:
        CapHumanError: unknown name, or a hook that cannot be imported.
    """
    if name in METHODS:
        return METHODS[name]
    if ":" in name:
        module_name, _, attribute = name.partition(":")
        try:
            fn = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError, SyntaxError) as error:
            raise CapHumanError(f"Cannot import method hook '{name}': {error}.") from None
        check_hook_signature(name, fn)
        return MethodSpec(name, fn, (fn.__doc__ or name).strip().splitlines()[0])
    raise CapHumanError(f"Unknown method '{name}'; choose from {', '.join(METHODS)} or give package.module:function.")


class MethodContext:
    """What methods and scorers share, built on first use: a :class:`~caphuman.session.CapHumanSession`
    (detector, head prior, pipeline) plus per-identity caches of references, heads and hints.

    Args:
        config: model + sampling config (sampling.height/width set the image size).
        weights_dir: the weights folder (see checkpoints/README.md).
        device: where models run.
    """

    def __init__(self, config: CapHumanConfig, weights_dir: str | Path, device: torch.device):
        self.config = config
        self.weights_dir = str(weights_dir)
        self.device = device
        # Photos become conditions exactly as `caphuman sample` and preprocessing make them.
        self.session = CapHumanSession(config, weights_dir, device, progress_bar=False)
        self._identities: dict[str, PreparedIdentity] = {}
        self._reference_faces: dict[str, list] = {}
        self._drivers: dict[str, HeadParams] = {}
        self._hints: dict[tuple[str, str], torch.Tensor] = {}

    @property
    def detector(self):
        return self.session.detector

    @property
    def head_prior(self):
        return self.session.head_prior

    @property
    def pipeline(self):
        return self.session.pipeline

    def identity(self, identity: Identity) -> PreparedIdentity:
        """The reference photo, its face and head (cached per identity)."""
        if identity.identity_id not in self._identities:
            # The head prior's frame (the photo squashed or padded to a square, head.photo_fit):
            # the generated images share it, so scorers compare like with like.
            image = self.session.head_input(identity.path)
            face = self.session.detect(image, 0, str(identity.path))
            head = self.session.head_prior.reconstruct(image, face_index=0)
            self._identities[identity.identity_id] = PreparedIdentity(image, face, head)
        return self._identities[identity.identity_id]

    def reference_faces(self, identity: Identity) -> list:
        """The pipeline's reference crops (recogniser + CLIP) of the identity's photo."""
        if identity.identity_id not in self._reference_faces:
            self.identity(identity)  # a photo without a face fails here, naming the file
            self._reference_faces[identity.identity_id] = self.session.reference_faces(identity.path, face_index=0)
        return self._reference_faces[identity.identity_id]

    def requested_head(self, identity: Identity, condition: HeadCondition) -> HeadParams:
        """The head parameters the condition asks for, for this identity."""
        driver = None
        if condition.driver is not None:
            if condition.driver not in self._drivers:
                self._drivers[condition.driver] = self.session.head(condition.driver, face_index=0)
            driver = self._drivers[condition.driver]
        return condition.apply(self.identity(identity).head, driver)

    def hint(self, identity: Identity, condition: HeadCondition) -> torch.Tensor:
        """(1, 9, H, W) rendered head condition, cached for the current identity (runs go identity
        by identity, and a batch may span several of its conditions)."""
        key = (identity.identity_id, condition.name)
        if key not in self._hints:
            if any(cached_identity != identity.identity_id for cached_identity, _ in self._hints):
                self._hints.clear()
            self._hints[key] = self.session.hint(self.requested_head(identity, condition))
        return self._hints[key]

    def sample(self, request: GenerationRequest, hint: torch.Tensor, capface_strength: float, mask_gating: bool) -> list[Image.Image]:
        """Run the pipeline once for all of ``request.seeds`` (one generator per seed)."""
        return self.sample_batch([request], [hint], capface_strength, mask_gating)[0]

    def sample_batch(
        self, requests: list[GenerationRequest], hints: list[torch.Tensor], capface_strength: float, mask_gating: bool
    ) -> list[list[Image.Image]]:
        """Run the pipeline once for every seed of every request (all of one identity).

        Each image has its own prompt, hint and ``torch.Generator`` seeded with its seed, so an
        image does not depend on what else is in the batch (up to floating-point rounding).

        Args:
            requests: requests of one identity. hints: (1, 9, H, W) per request.
        Returns:
            Per request, one image per seed in seed order.
        """
        identities = {request.identity.identity_id for request in requests}
        if len(identities) != 1:
            raise ValueError(f"a batch holds one identity's requests, got {sorted(identities)}")
        prompts = [request.prompt_text for request in requests for _ in request.seeds]
        hint = torch.cat([hint.expand(len(request.seeds), -1, -1, -1) for request, hint in zip(requests, hints, strict=True)])
        generators = [torch.Generator(device="cpu").manual_seed(int(seed)) for request in requests for seed in request.seeds]
        output = self.session.generate(
            prompts,
            self.reference_faces(requests[0].identity),
            hint,
            generator=generators,
            num_images=1,
            capface_strength=capface_strength,
            mask_gating=mask_gating,
        )
        images, start = list(output.images), 0
        per_request = []
        for request in requests:
            per_request.append(images[start : start + len(request.seeds)])
            start += len(request.seeds)
        return per_request

    def close(self) -> None:
        self.session.close()


@register_batch_method("caphuman", "CapHuman: identity + head condition (strength and gating from the config)")
def caphuman_method(requests: list[GenerationRequest], context: MethodContext) -> list[list[Image.Image]]:
    sampling = context.config.sampling
    hints = [context.hint(request.identity, request.condition) for request in requests]
    return context.sample_batch(requests, hints, sampling.capface_strength, sampling.mask_gating)


@register_batch_method("text-only", "plain Stable Diffusion on the same backbone: CapFace strength 0 (no identity, no head)")
def text_only_method(requests: list[GenerationRequest], context: MethodContext) -> list[list[Image.Image]]:
    hints = [torch.zeros(1, HINT_CHANNELS, request.height, request.width) for request in requests]
    return context.sample_batch(requests, hints, capface_strength=0.0, mask_gating=False)


@register_batch_method("caphuman-no-head", "CapHuman without the head branch: zero hint, CapFace on, no mask gating")
def no_head_method(requests: list[GenerationRequest], context: MethodContext) -> list[list[Image.Image]]:
    hints = [torch.zeros(1, HINT_CHANNELS, request.height, request.width) for request in requests]
    return context.sample_batch(requests, hints, context.config.sampling.capface_strength, mask_gating=False)


DEFAULT_METHODS = ("caphuman", "text-only", "caphuman-no-head")

__all__ = [
    "DEFAULT_METHODS",
    "GenerationRequest",
    "METHODS",
    "MethodContext",
    "MethodSpec",
    "PreparedIdentity",
    "get_method",
    "register_batch_method",
    "register_method",
]
