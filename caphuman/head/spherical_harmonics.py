"""Second-order spherical-harmonics (SH) lighting of Lambertian surfaces, as DECA uses it.

A distant lighting environment convolved with the Lambertian (clamped cosine) kernel is a smooth
function of the surface normal n = (x, y, z) (unit, camera frame: x right, y up, z towards the
viewer). Ramamoorthi & Hanrahan (2001) showed that its first nine real SH terms carry almost all
of it, so the irradiance per colour channel is

    E_c(n) = sum_k  L[k, c] * K_k * P_k(n),        k = 0..8,

with ``L`` the (9, 3) coefficients of a :class:`~caphuman.head.params.HeadParams` (``lighting``)
and the basis order and constants below (DECA's order and its Lambertian-convolved constants,
i.e. the real SH normalisation Y_lm times the kernel's band factors A_1 = 2*pi/3 and A_2 = pi/4):

    k  P_k(n)           K_k
    0  1                1 / sqrt(4 pi)
    1  x                (2 pi / 3) * sqrt(3 / (4 pi))
    2  y                (2 pi / 3) * sqrt(3 / (4 pi))
    3  z                (2 pi / 3) * sqrt(3 / (4 pi))
    4  x y              (pi / 4) * 3 * sqrt(5 / (12 pi))
    5  x z              (pi / 4) * 3 * sqrt(5 / (12 pi))
    6  y z              (pi / 4) * 3 * sqrt(5 / (12 pi))
    7  x^2 - y^2        (pi / 4) * (3 / 2) * sqrt(5 / (12 pi))
    8  3 z^2 - 1        (pi / 4) * (1 / 2) * sqrt(5 / (4 pi))

:func:`sh_basis` returns K_k * P_k(n), so irradiance is a plain dot product with ``L``.

One quirk is kept on purpose: DECA's band-0 constant is Y_00 = 1 / sqrt(4 pi) without the kernel's
factor A_0 = pi, so its (and our) L[0] is pi times the textbook coefficient of the same lighting.
Matching DECA matters because CapFace was trained on DECA's renders and the lighting transfer copies
DECA-space coefficients. With that, a unit directional light from direction d corresponds to
L[0] = pi * Y_00(d) and L[k] = Y_k(d) for k >= 1 (textbook real SH), and gives the truncated
clamped-cosine irradiance 1/4 + cos(t)/2 + (5/32) (3 cos(t)^2 - 1), t the angle between n and d.
Coefficients fitted with :func:`fit_sh_lighting` therefore live in the same space as DECA's
``light`` output (given normals in the same frame).
"""

from __future__ import annotations

import math

import torch

SH_BASIS_SIZE = 9

# K_k of the module docstring, in basis order.
SH_CONSTANTS: tuple[float, ...] = (
    1.0 / math.sqrt(4.0 * math.pi),
    (2.0 * math.pi / 3.0) * math.sqrt(3.0 / (4.0 * math.pi)),
    (2.0 * math.pi / 3.0) * math.sqrt(3.0 / (4.0 * math.pi)),
    (2.0 * math.pi / 3.0) * math.sqrt(3.0 / (4.0 * math.pi)),
    (math.pi / 4.0) * 3.0 * math.sqrt(5.0 / (12.0 * math.pi)),
    (math.pi / 4.0) * 3.0 * math.sqrt(5.0 / (12.0 * math.pi)),
    (math.pi / 4.0) * 3.0 * math.sqrt(5.0 / (12.0 * math.pi)),
    (math.pi / 4.0) * 1.5 * math.sqrt(5.0 / (12.0 * math.pi)),
    (math.pi / 4.0) * 0.5 * math.sqrt(5.0 / (4.0 * math.pi)),
)


def sh_basis(normals: torch.Tensor) -> torch.Tensor:
    """Lambertian-convolved SH basis K_k * P_k(n) of unit normals.

    Args:
        normals: (..., 3) unit normals (x, y, z) in the camera frame.

    Returns:
        (..., 9) basis values in the order of the module docstring; same dtype and device.
    """
    if normals.shape[-1] != 3:
        raise ValueError(f"sh_basis expects normals of shape (..., 3), got {tuple(normals.shape)}.")
    x, y, z = normals.unbind(-1)
    polynomials = torch.stack([torch.ones_like(x), x, y, z, x * y, x * z, y * z, x * x - y * y, 3.0 * z * z - 1.0], dim=-1)
    constants = torch.tensor(SH_CONSTANTS, dtype=normals.dtype, device=normals.device)
    return polynomials * constants


def sh_shading(normals: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """Irradiance of unit normals under SH lighting, per RGB channel (not clipped).

    Args:
        normals: (B, N, 3) per-point normals, or (B, 3, H, W) normal images.
        coeffs: (B, 9, 3) SH coefficients per RGB channel.

    Returns:
        Irradiance in the layout of ``normals``: (B, N, 3) or (B, 3, H, W). Zero normals (e.g. the
        background of a render) get only the constant term K_0 * L[0] - K_8 * L[8]; callers mask.
    """
    if coeffs.ndim != 3 or coeffs.shape[1:] != (SH_BASIS_SIZE, 3):
        raise ValueError(f"sh_shading expects coeffs of shape (B, 9, 3), got {tuple(coeffs.shape)}.")
    coeffs = coeffs.to(normals.dtype)
    if normals.ndim == 3 and normals.shape[-1] == 3:
        return torch.einsum("bnk,bkc->bnc", sh_basis(normals), coeffs)
    if normals.ndim == 4 and normals.shape[1] == 3:
        basis = sh_basis(normals.permute(0, 2, 3, 1))  # (B, H, W, 9)
        return torch.einsum("bhwk,bkc->bchw", basis, coeffs)
    raise ValueError(f"sh_shading expects normals of shape (B, N, 3) or (B, 3, H, W), got {tuple(normals.shape)}.")


def fit_sh_lighting(
    normals: torch.Tensor,
    intensities: torch.Tensor,
    albedo: torch.Tensor | None = None,
    ridge: float = 1e-5,
) -> torch.Tensor:
    """Least-squares SH lighting that explains observed colours of a Lambertian surface.

    Per channel c, solves  min_L  mean_i (albedo_ic * basis(n_i) . L_c - I_ic)^2 + ridge * |L_c|^2,
    i.e. (A^T A / N + ridge * Id) L_c = A^T I_c / N, in float64. The ridge keeps the system
    solvable when the normals cover only part of the sphere (a face seen from the front never
    shows normals with z < 0), where some basis functions are nearly collinear.

    Args:
        normals: (N, 3) unit normals in the camera frame.
        intensities: (N, 3) observed linear RGB values, typically in [0, 1].
        albedo: (N, 3) albedo in [0, 1] at the same points, or None for a white surface.
        ridge: non-negative Tikhonov weight on the coefficients (relative to the mean squared error).
            For normals spread over the front hemisphere (a face), the Gram matrix A^T A / N has
            eigenvalues from about 1e-3 to 0.4, so a ridge well below 1e-4 barely biases the fit.

    Returns:
        (9, 3) coefficients in the dtype and device of ``normals``.
    """
    if normals.ndim != 2 or normals.shape[1] != 3 or intensities.shape != normals.shape:
        raise ValueError(
            f"fit_sh_lighting expects normals and intensities of shape (N, 3), got {tuple(normals.shape)} and {tuple(intensities.shape)}."
        )
    if albedo is not None and albedo.shape != normals.shape:
        raise ValueError(f"fit_sh_lighting expects albedo of shape {tuple(normals.shape)}, got {tuple(albedo.shape)}.")
    if normals.shape[0] == 0:
        raise ValueError("fit_sh_lighting needs at least one sample.")
    if ridge < 0:
        raise ValueError(f"fit_sh_lighting needs ridge >= 0, got {ridge}.")
    count = normals.shape[0]
    basis = sh_basis(normals.detach().to(torch.float64))  # (N, 9)
    targets = intensities.detach().to(torch.float64)  # (N, 3)
    if albedo is None:
        weights = torch.ones_like(targets)
    else:
        weights = albedo.detach().to(torch.float64)
    # One 9x9 system per channel: design matrix rows are albedo_ic * basis(n_i).
    design = weights.t()[:, :, None] * basis[None]  # (3, N, 9)
    gram = design.transpose(1, 2) @ design / count  # (3, 9, 9)
    gram = gram + ridge * torch.eye(SH_BASIS_SIZE, dtype=torch.float64, device=gram.device)
    rhs = design.transpose(1, 2) @ targets.t()[:, :, None] / count  # (3, 9, 1)
    solution = torch.linalg.lstsq(gram, rhs).solution if ridge == 0 else torch.linalg.solve(gram, rhs)
    return solution[..., 0].t().to(dtype=normals.dtype)
