"""Head parameters shared by every head prior, and the condition-transfer rules.

Conventions (every backend converts to these, so transfer and rendering never depend on the
backend):
- Camera frame: x right, y up, z towards the viewer (OpenGL). Projection is orthographic.
- ``rotation`` is (yaw, pitch, roll) in degrees, applied to the frontal head as
  R = Rz(roll) @ Rx(pitch) @ Ry(yaw) (:func:`caphuman.head.rotations.yaw_pitch_roll_to_matrix`):
  positive yaw turns the nose towards the image's right, positive pitch tilts the nose down,
  positive roll turns the head counter-clockwise in the image.
- ``camera`` is (scale, tx, ty): a point X of the rotated head lands at normalised image
  coordinates x = scale * X_x + tx, y = scale * X_y + ty, with x, y in [-1, 1] (y up); the pixel
  is u = (x + 1) / 2 * W, v = (1 - y) / 2 * H.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from caphuman.errors import CapHumanError

TRANSFER_MODES = ("position", "pose", "expression", "lighting", "all")


@dataclass
class HeadParams:
    """A batch of reconstructed heads. Leading dimension B everywhere.

    Attributes:
        shape: (B, S) identity shape coefficients in the backend's basis.
        expression: (B, E) expression coefficients in the backend's basis.
        jaw: (B, 3) jaw rotation (axis-angle, radians); zeros for backends without a jaw joint.
        rotation: (B, 3) yaw, pitch, roll in degrees (see module docstring).
        camera: (B, 3) orthographic scale, tx, ty (see module docstring).
        albedo: (B, ...) the backend's albedo: texture coefficients or per-vertex colours.
        lighting: (B, 9, 3) second-order spherical-harmonics lighting, per RGB channel.
        backend: name of the head prior that made these, so a render uses the right basis.
    """

    shape: torch.Tensor
    expression: torch.Tensor
    jaw: torch.Tensor
    rotation: torch.Tensor
    camera: torch.Tensor
    albedo: torch.Tensor
    lighting: torch.Tensor
    backend: str

    def clone(self) -> HeadParams:
        return dataclasses.replace(self, **{f.name: getattr(self, f.name).clone() for f in dataclasses.fields(self) if f.name != "backend"})

    def to(self, device: torch.device | str) -> HeadParams:
        return dataclasses.replace(self, **{f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self) if f.name != "backend"})


def parse_modes(modes: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Parse "position,pose" or a list into a tuple of known modes; unknown names are an error."""
    items = [m.strip() for m in modes.split(",")] if isinstance(modes, str) else [m.strip() for m in modes]
    items = [m for m in items if m]
    unknown = [m for m in items if m not in TRANSFER_MODES]
    if unknown:
        raise CapHumanError(f"Unknown transfer mode(s) {unknown}; choose from {', '.join(TRANSFER_MODES)}.")
    return tuple(items)


def transfer(reference: HeadParams, driver: HeadParams, modes: str | list[str] | tuple[str, ...]) -> HeadParams:
    """Take the named conditions from ``driver``; identity shape and albedo always stay the reference's.

    - position: camera (scale and translation)
    - pose: global head rotation
    - expression: expression coefficients and jaw
    - lighting: spherical-harmonics coefficients
    - all: all of the above
    """
    if reference.backend != driver.backend:
        raise CapHumanError(f"Cannot transfer between head priors '{reference.backend}' and '{driver.backend}'; reconstruct both with one prior.")
    chosen = set(parse_modes(modes))
    if "all" in chosen:
        chosen = {"position", "pose", "expression", "lighting"}
    out = reference.clone()
    if "position" in chosen:
        out.camera = driver.camera.clone()
    if "pose" in chosen:
        out.rotation = driver.rotation.clone()
    if "expression" in chosen:
        out.expression = driver.expression.clone()
        out.jaw = driver.jaw.clone()
    if "lighting" in chosen:
        out.lighting = driver.lighting.clone()
    return out


# Head angles (degrees) the built-in prior was measured on (README, "Head priors"): renders at
# yaw -45..45 read back within a few degrees, in-plane roll +-20 within 0.6; beyond that untested.
BUILTIN_TESTED_DEGREES = {"yaw": 45.0, "roll": 20.0}


def untested_pose(params: HeadParams, backend: str) -> str | None:
    """A sentence when the head's angles lie outside the range the ``backend`` prior was tested
    on (only the built-in prior has a stated range), else None."""
    if backend != "builtin":
        return None
    angles = dict(zip(("yaw", "pitch", "roll"), (float(v) for v in params.rotation[0]), strict=True))
    outside = [f"{axis} {angles[axis]:.0f}" for axis, limit in BUILTIN_TESTED_DEGREES.items() if abs(angles[axis]) > limit]
    if not outside:
        return None
    tested = ", ".join(f"{axis} +-{limit:.0f}" for axis, limit in BUILTIN_TESTED_DEGREES.items())
    return (
        f"The head pose ({', '.join(outside)} degrees) is outside the range the built-in head prior was tested on ({tested}); "
        "the hint may not match the requested pose (--head-prior deca covers stronger turns)."
    )


def set_pose(params: HeadParams, yaw: float | None = None, pitch: float | None = None, roll: float | None = None) -> HeadParams:
    """Return a copy with the given angles (degrees) replaced; ``None`` keeps the reconstructed one."""
    out = params.clone()
    for index, value in enumerate((yaw, pitch, roll)):
        if value is not None:
            out.rotation[:, index] = float(value)
    return out
