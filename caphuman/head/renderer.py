"""A batched, pure-PyTorch triangle rasteriser that renders the head prior's hint images.

Conventions are those of :class:`caphuman.head.prior.HeadMesh`: vertices in normalised camera
coordinates (x right and y up in [-1, 1] across the image, z towards the viewer, orthographic, so
a larger z is closer). A point (x, y) lands at pixel coordinates u = (x + 1) / 2 * W,
v = (1 - y) / 2 * H, and pixel (row i, column j) samples the point u = j + 0.5, v = i + 0.5.

How it rasterises (no loop over pixels, one loop over chunks of triangles):
1. Every triangle of every batch item lists the pixel centres of its screen bounding box
   (``repeat_interleave`` over the box sizes); chunks keep that list under a memory budget.
2. Each candidate (triangle, pixel) pair gets its barycentric coordinates from three affine
   functions precomputed per triangle; pairs outside the triangle are dropped.
3. The z-buffer is one ``scatter_reduce(amax)`` over a 64-bit key per pair whose high 32 bits are
   the depth (a float32 reinterpreted as an order-preserving integer) and whose low 32 bits are the
   triangle id. The winning key therefore names both the nearest depth and the triangle that owns
   the pixel (equal depths go to the larger triangle id, deterministically), so no second
   depth-comparison pass is needed.
4. For covered pixels only, barycentrics are recomputed from the owning triangle with ordinary
   differentiable tensor ops, and per-vertex attributes are interpolated. Gradients therefore
   reach vertices, albedo and lighting (not visibility).

Shading, per covered pixel: normal = barycentric interpolation of the unit vertex normals
(renormalised to unit length or not, see ``renormalize_normals``); albedo = interpolated
per-vertex albedo, or a bilinear lookup of a UV albedo map at the interpolated texture coordinate
(``texture``, as DECA's renderer does with ``grid_sample(align_corners=False)``); shading = SH
irradiance of that normal; shaded = albedo x shading (clipped to [0, 1] or not, see
``clamp_colours``). With ``renormalize_normals=False, clamp_colours=False`` and a UV texture these
are the formulas of DECA's ``SRenderY`` that CapHuman's training hints were rendered with.

There is no back-face culling: the head priors' meshes may be open (a face mask seen from the side
shows its back), and the z-buffer hides back faces of closed meshes anyway. Back faces keep their
interpolated normals, which then point away from the viewer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from caphuman.head.prior import HeadMesh, UVTexture
from caphuman.head.spherical_harmonics import sh_shading

logger = logging.getLogger(__name__)

# Candidate (triangle, pixel) pairs per chunk. Each pair costs roughly 150 bytes of temporaries,
# so this bounds a chunk at about 300 MB while keeping the per-chunk overhead negligible.
DEFAULT_PAIRS_PER_CHUNK = 1 << 21

# Inside test tolerance on barycentric coordinates. Pixel centres lying exactly on an edge shared by
# two triangles may otherwise fall in neither through rounding, leaving pinholes in closed meshes.
INSIDE_TOLERANCE = 1e-6

# A triangle whose doubled screen area (in pixels^2) is below this covers no pixel centre reliably.
MIN_DOUBLE_AREA = 1e-12

_EMPTY_KEY = torch.iinfo(torch.int64).min


@dataclass
class RenderOutput:
    """Rendered images of a batch of meshes; every tensor is float32 on the mesh's device unless noted.

    Attributes:
        normals: (B, 3, H, W) normals in the camera frame (x right, y up, z towards the viewer):
            unit length, or the interpolated unit vertex normals (length <= 1) when not
            renormalised; 0 on the background.
        albedo: (B, 3, H, W) albedo (interpolated per-vertex, or looked up in the UV map), clipped
            to [0, 1] when colours are clamped; 0 on the background.
        shading: (B, 3, H, W) SH irradiance of ``normals`` under the lighting (not clipped); 0 on the
            background.
        shaded: (B, 3, H, W) albedo * shading, clipped to [0, 1] when colours are clamped; 0 on the
            background.
        mask: (B, 1, H, W) 1 where a triangle covers the pixel centre, else 0.
        depth: (B, 1, H, W) interpolated z of the visible surface (larger is closer); 0 on the background.
        face_index: (B, 1, H, W) int64 index into ``faces`` of the triangle seen at each pixel; -1 on
            the background.
    """

    normals: torch.Tensor
    albedo: torch.Tensor
    shading: torch.Tensor
    shaded: torch.Tensor
    mask: torch.Tensor
    depth: torch.Tensor
    face_index: torch.Tensor


def vertex_normals(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Area-weighted vertex normals.

    Args:
        vertices: (B, V, 3) positions.
        faces: (F, 3) long indices, counter-clockwise seen from the side the normal points to.

    Returns:
        (B, V, 3) unit normals (zero for vertices used by no non-degenerate face).
    """
    corners = vertices[:, faces]  # (B, F, 3, 3)
    # The unnormalised cross product has length 2 * area, which is exactly the area weighting.
    face_normals = torch.linalg.cross(corners[:, :, 1] - corners[:, :, 0], corners[:, :, 2] - corners[:, :, 0], dim=-1)
    summed = torch.zeros_like(vertices)
    for corner in range(3):
        summed = summed.index_add(1, faces[:, corner], face_normals)
    return torch.nn.functional.normalize(summed, dim=-1, eps=1e-12)


def _order_preserving_int(values: torch.Tensor) -> torch.Tensor:
    """Map float32 values to int64 so that integer order equals float order (NaN excluded)."""
    bits = values.contiguous().view(torch.int32)
    # Negative floats are sign-magnitude: flipping their 31 magnitude bits reverses their order
    # while keeping them below every non-negative float.
    return torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits).to(torch.int64)


class MeshRenderer:
    """Renders normals, albedo and SH-shaded images of triangle meshes with a z-buffer.

    Args:
        image_size: output size, ``S`` for S x S or ``(H, W)``.
        pairs_per_chunk: memory budget, in candidate (triangle, pixel) pairs, for one rasterisation step.
    """

    def __init__(self, image_size: int | tuple[int, int], pairs_per_chunk: int = DEFAULT_PAIRS_PER_CHUNK):
        height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
        if height <= 0 or width <= 0:
            raise ValueError(f"MeshRenderer needs a positive image size, got {image_size}.")
        self.height = int(height)
        self.width = int(width)
        self.pairs_per_chunk = int(pairs_per_chunk)

    def render_mesh(self, mesh: HeadMesh) -> RenderOutput:
        """Render a :class:`HeadMesh` with its own albedo source and shading rules (see :meth:`render`)."""
        return self.render(
            mesh.vertices,
            mesh.faces,
            mesh.albedo,
            mesh.lighting,
            texture=mesh.texture,
            renormalize_normals=mesh.renormalize_normals,
            clamp_colours=mesh.clamp_colours,
        )

    def render(
        self,
        vertices: torch.Tensor,
        faces: torch.Tensor,
        albedo: torch.Tensor | None,
        lighting: torch.Tensor,
        *,
        texture: UVTexture | None = None,
        renormalize_normals: bool = True,
        clamp_colours: bool = True,
    ) -> RenderOutput:
        """Rasterise and shade a batch of meshes that share one triangle list.

        Args:
            vertices: (B, V, 3) normalised camera coordinates (see module docstring).
            faces: (F, 3) long vertex indices.
            albedo: (B, V, 3) per-vertex albedo, or None when ``texture`` is given.
            lighting: (B, 9, 3) SH coefficients per RGB channel.
            texture: UV albedo map (B, 3, Ht, Wt) with its texture coordinates, looked up per pixel.
            renormalize_normals: rescale interpolated normals to unit length (False: DECA's rule).
            clamp_colours: clip albedo and shaded images to [0, 1] (False: DECA's rule).

        Returns:
            A :class:`RenderOutput` of size (self.height, self.width).
        """
        batch, vertex_count = self._check_inputs(vertices, faces, albedo, lighting, texture)
        vertices = vertices.float()
        device = vertices.device
        faces = faces.to(device=device, dtype=torch.long)
        if albedo is not None:
            albedo = albedo.to(device=device, dtype=torch.float32)
        lighting = lighting.to(device=device, dtype=torch.float32)
        face_count = max(faces.shape[0], 1)  # only used as a divisor
        height, width = self.height, self.width

        screen = self._to_screen(vertices)  # (B, V, 3): u, v in pixels, z unchanged
        triangles = screen[:, faces].reshape(-1, 3, 3)  # (B*F, 3 corners, uvz)
        face_index = self._rasterise(triangles.detach(), batch)  # (B*H*W,) global triangle id or -1

        covered = face_index >= 0
        pixel_ids = covered.nonzero().squeeze(1)
        owner = face_index[pixel_ids]
        weights = self._barycentrics(triangles[owner], pixel_ids)  # (P, 3)

        batch_of_pixel = pixel_ids // (height * width)
        corner_vertices = faces[owner % face_count] + (batch_of_pixel * vertex_count)[:, None]  # (P, 3)

        def interpolate(per_vertex: torch.Tensor) -> torch.Tensor:
            flat = per_vertex.reshape(batch * vertex_count, -1)
            return (flat[corner_vertices] * weights[:, :, None]).sum(dim=1)  # (P, C)

        pixel_normals = interpolate(vertex_normals(vertices, faces))
        if renormalize_normals:
            pixel_normals = torch.nn.functional.normalize(pixel_normals, dim=-1, eps=1e-12)
        pixel_depth = interpolate(vertices[..., 2:])

        normals = self._scatter_image(pixel_ids, pixel_normals, batch)
        depth = self._scatter_image(pixel_ids, pixel_depth, batch)
        mask = covered.view(batch, 1, height, width).float()
        if texture is None:
            albedo_image = self._scatter_image(pixel_ids, interpolate(albedo), batch)
        else:
            albedo_image = self._texture_lookup(texture, owner % face_count, weights, pixel_ids, batch) * mask
        shading = sh_shading(normals, lighting) * mask
        shaded = albedo_image * shading
        if clamp_colours:
            albedo_image = albedo_image.clamp(0.0, 1.0)
            shaded = shaded.clamp(0.0, 1.0)
        local_face_index = torch.where(covered, face_index % face_count, face_index)
        return RenderOutput(
            normals=normals,
            albedo=albedo_image,
            shading=shading,
            shaded=shaded,
            mask=mask,
            depth=depth,
            face_index=local_face_index.view(batch, 1, height, width),
        )

    # ----------------------------------------------------------------------------------------------

    def _texture_lookup(
        self, texture: UVTexture, local_faces: torch.Tensor, weights: torch.Tensor, pixel_ids: torch.Tensor, batch: int
    ) -> torch.Tensor:
        """(B, 3, H, W) albedo sampled bilinearly from the UV map at each pixel's interpolated (u, v).

        As DECA's SRenderY: the texture coordinate is interpolated like any vertex attribute, mapped
        to grid_sample's frame (x = 2u - 1, y = 1 - 2v: v up, the map's row 0 on top) and sampled
        with ``grid_sample(align_corners=False)`` (texel centres at (j + 0.5) / W, zeros outside).
        Background pixels sample at (0, 0); the caller masks them.
        """
        device = weights.device
        uvs = texture.uvs.to(device=device, dtype=torch.float32)
        corner_uvs = uvs[texture.uv_faces.to(device=device, dtype=torch.long)[local_faces]]  # (P, 3, 2)
        pixel_uv = (corner_uvs * weights[:, :, None]).sum(dim=1)
        grid_values = torch.stack([2.0 * pixel_uv[:, 0] - 1.0, 1.0 - 2.0 * pixel_uv[:, 1]], dim=-1)
        grid = self._scatter_image(pixel_ids, grid_values, batch).permute(0, 2, 3, 1)  # (B, H, W, 2)
        image = texture.image.to(device=device, dtype=torch.float32)
        return torch.nn.functional.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    @staticmethod
    def _check_inputs(
        vertices: torch.Tensor,
        faces: torch.Tensor,
        albedo: torch.Tensor | None,
        lighting: torch.Tensor,
        texture: UVTexture | None = None,
    ) -> tuple[int, int]:
        if vertices.ndim != 3 or vertices.shape[-1] != 3:
            raise ValueError(f"vertices must be (B, V, 3), got {tuple(vertices.shape)}.")
        batch, vertex_count = vertices.shape[:2]
        if faces.ndim != 2 or faces.shape[1] != 3 or faces.dtype.is_floating_point:
            raise ValueError(f"faces must be an integer (F, 3) tensor, got {tuple(faces.shape)} {faces.dtype}.")
        if faces.numel() and (int(faces.min()) < 0 or int(faces.max()) >= vertex_count):
            raise ValueError(f"faces index vertices outside [0, {vertex_count}).")
        if (albedo is None) == (texture is None):
            raise ValueError("Give the albedo either per vertex or as a UV texture (exactly one of them).")
        if albedo is not None and albedo.shape != vertices.shape:
            raise ValueError(f"albedo must be (B, V, 3) like vertices {tuple(vertices.shape)}, got {tuple(albedo.shape)}.")
        if texture is not None:
            if texture.image.ndim != 4 or texture.image.shape[:2] != (batch, 3):
                raise ValueError(f"texture image must be ({batch}, 3, Ht, Wt), got {tuple(texture.image.shape)}.")
            if texture.uvs.ndim != 2 or texture.uvs.shape[1] != 2:
                raise ValueError(f"texture uvs must be (T, 2), got {tuple(texture.uvs.shape)}.")
            if texture.uv_faces.shape != faces.shape or texture.uv_faces.dtype.is_floating_point:
                raise ValueError(f"texture uv_faces must be integer {tuple(faces.shape)} like faces, got {tuple(texture.uv_faces.shape)}.")
            if texture.uv_faces.numel() and (int(texture.uv_faces.min()) < 0 or int(texture.uv_faces.max()) >= texture.uvs.shape[0]):
                raise ValueError(f"texture uv_faces index texture coordinates outside [0, {texture.uvs.shape[0]}).")
        if lighting.shape != (batch, 9, 3):
            raise ValueError(f"lighting must be ({batch}, 9, 3), got {tuple(lighting.shape)}.")
        if batch * max(faces.shape[0], 1) >= 2**31:
            raise ValueError("Too many triangles in one batch for 32-bit triangle ids; render in smaller batches.")
        return batch, vertex_count

    def _to_screen(self, vertices: torch.Tensor) -> torch.Tensor:
        """(B, V, 3) normalised coords -> (B, V, 3) with u, v in pixels (v down) and z unchanged."""
        u = (vertices[..., 0] + 1.0) * (0.5 * self.width)
        v = (1.0 - vertices[..., 1]) * (0.5 * self.height)
        return torch.stack([u, v, vertices[..., 2]], dim=-1)

    def _rasterise(self, triangles: torch.Tensor, batch: int) -> torch.Tensor:
        """Z-buffer visibility.

        Args:
            triangles: (B*F, 3, 3) screen-space corners (u, v, z), batch-major.
            batch: B.

        Returns:
            (B*H*W,) int64 id (into the B*F triangles) of the nearest triangle per pixel, -1 where none.
        """
        height, width = self.height, self.width
        device = triangles.device
        face_count = triangles.shape[0] // max(batch, 1)
        keys = torch.full((batch * height * width,), _EMPTY_KEY, dtype=torch.int64, device=device)
        if triangles.shape[0] == 0:
            return torch.full_like(keys, -1)

        coefficients, valid = self._barycentric_planes(triangles)  # (T, 9), (T,)
        # Pixel column j is a candidate when its centre j + 0.5 lies in [min u, max u].
        u_min = torch.ceil(triangles[:, :, 0].amin(1) - 0.5).clamp(min=0)
        u_max = torch.floor(triangles[:, :, 0].amax(1) - 0.5).clamp(max=width - 1)
        v_min = torch.ceil(triangles[:, :, 1].amin(1) - 0.5).clamp(min=0)
        v_max = torch.floor(triangles[:, :, 1].amax(1) - 0.5).clamp(max=height - 1)
        box_width = (u_max - u_min + 1).clamp(min=0)
        box_height = (v_max - v_min + 1).clamp(min=0)
        # Non-finite corners make NaN boxes; such triangles are dropped with the degenerate ones.
        counts = torch.nan_to_num(box_width * box_height, nan=0.0).long() * valid.long()

        candidates = counts.nonzero().squeeze(1)
        if candidates.numel() == 0:
            return torch.full_like(keys, -1)
        counts = counts[candidates]
        boxes = torch.stack([u_min, v_min, box_width], dim=1)[candidates].long()  # (T', 3)
        ends = counts.cumsum(0)

        # Chunk boundaries on the cumulative pair count (a single huge triangle gets its own chunk).
        chunk_starts = [0]
        ends_cpu = ends.cpu()
        total = int(ends_cpu[-1])
        while chunk_starts[-1] < len(ends_cpu):
            start = chunk_starts[-1]
            offset = int(ends_cpu[start - 1]) if start > 0 else 0
            stop = int(torch.searchsorted(ends_cpu, offset + self.pairs_per_chunk, right=True))
            chunk_starts.append(max(stop, start + 1))
        logger.debug("Rasterising %d triangles, %d candidate pixels, %d chunk(s).", len(ends_cpu), total, len(chunk_starts) - 1)

        for start, stop in zip(chunk_starts[:-1], chunk_starts[1:], strict=False):
            chunk = candidates[start:stop]
            chunk_counts = counts[start:stop]
            chunk_offsets = ends[start:stop] - chunk_counts
            # The pair count comes from the CPU copy so that CUDA needs no synchronisation here.
            pair_count = int(ends_cpu[stop - 1]) - (int(ends_cpu[start - 1]) if start > 0 else 0)
            pair_triangle = torch.repeat_interleave(torch.arange(stop - start, device=device), chunk_counts, output_size=pair_count)
            within_box = torch.arange(pair_triangle.shape[0], device=device) + chunk_offsets[0] - chunk_offsets[pair_triangle]
            box = boxes[start:stop][pair_triangle]
            column = box[:, 0] + within_box % box[:, 2]
            row = box[:, 1] + within_box // box[:, 2]

            pair_global = chunk[pair_triangle]
            planes = coefficients[pair_global]  # (P, 9)
            w0, w1, z = self._evaluate_planes(planes, column.to(planes.dtype) + 0.5, row.to(planes.dtype) + 0.5)
            inside = (w0 >= -INSIDE_TOLERANCE) & (w1 >= -INSIDE_TOLERANCE) & (1.0 - w0 - w1 >= -INSIDE_TOLERANCE)

            triangle_id = pair_global[inside]
            batch_index = triangle_id // face_count
            pixel = (batch_index * height + row[inside]) * width + column[inside]
            key = (_order_preserving_int(z[inside]) << 32) | triangle_id
            keys.scatter_reduce_(0, pixel, key, reduce="amax", include_self=True)

        return torch.where(keys == _EMPTY_KEY, -1, keys & 0xFFFFFFFF)

    @staticmethod
    def _barycentric_planes(triangles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Affine functions of the pixel position giving w0, w1 and z over each triangle.

        The functions are expressed relative to the third corner p2 = (u2, v2):
        w0 = a0 du + b0 dv, w1 = a1 du + b1 dv, z = z2 + az du + bz dv with du = u - u2, dv = v - v2.
        Working with differences avoids the float32 cancellation of absolute forms such as
        u1 v2 - u2 v1, which costs about 1e-2 in the weights of one-pixel triangles at 512 px.

        Args:
            triangles: (T, 3, 3) corners (u, v, z).

        Returns:
            (T, 9) rows [a0, b0, a1, b1, az, bz, z2, u2, v2], and a (T,) bool that is False for
            degenerate (zero-area or non-finite) triangles.
        """
        (u0, v0, z0), (u1, v1, z1), (u2, v2, z2) = (triangles[:, k].unbind(-1) for k in range(3))
        e0u, e0v, e1u, e1v = u0 - u2, v0 - v2, u1 - u2, v1 - v2
        double_area = e0u * e1v - e1u * e0v
        valid = torch.isfinite(double_area) & (double_area.abs() > MIN_DOUBLE_AREA)
        inverse = torch.where(valid, 1.0 / torch.where(valid, double_area, torch.ones_like(double_area)), 0.0)
        # Solving [e0 e1] (w0, w1)^T = (du, dv)^T with Cramer's rule.
        a0, b0 = e1v * inverse, -e1u * inverse
        a1, b1 = -e0v * inverse, e0u * inverse
        # z = z2 + w0 (z0 - z2) + w1 (z1 - z2) is affine as well (orthographic projection).
        dz0, dz1 = z0 - z2, z1 - z2
        planes = torch.stack([a0, b0, a1, b1, a0 * dz0 + a1 * dz1, b0 * dz0 + b1 * dz1, z2, u2, v2], dim=-1)
        return planes, valid

    @staticmethod
    def _evaluate_planes(planes: torch.Tensor, centre_u: torch.Tensor, centre_v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(P, 9) planes of :meth:`_barycentric_planes` at (P,) points -> w0, w1, z, each (P,)."""
        du = centre_u - planes[:, 7]
        dv = centre_v - planes[:, 8]
        w0 = planes[:, 0] * du + planes[:, 1] * dv
        w1 = planes[:, 2] * du + planes[:, 3] * dv
        z = planes[:, 6] + planes[:, 4] * du + planes[:, 5] * dv
        return w0, w1, z

    def _barycentrics(self, owner_triangles: torch.Tensor, pixel_ids: torch.Tensor) -> torch.Tensor:
        """Differentiable barycentric weights of pixel centres in their owning triangles.

        Args:
            owner_triangles: (P, 3, 3) screen-space corners (u, v, z) of each pixel's triangle.
            pixel_ids: (P,) flat pixel ids (b*H*W + row*W + column).

        Returns:
            (P, 3) weights, clamped to [0, 1] and summing to 1.
        """
        within_image = pixel_ids % (self.height * self.width)
        centre_u = (within_image % self.width).to(owner_triangles.dtype) + 0.5
        centre_v = (within_image // self.width).to(owner_triangles.dtype) + 0.5
        planes, _ = self._barycentric_planes(owner_triangles)
        w0, w1, _ = self._evaluate_planes(planes, centre_u, centre_v)
        # Pixels admitted by the inside tolerance may sit a hair outside; keep weights convex.
        weights = torch.stack([w0, w1, 1.0 - w0 - w1], dim=-1).clamp(0.0, 1.0)
        return weights / weights.sum(dim=-1, keepdim=True).clamp(min=1e-12)

    def _scatter_image(self, pixel_ids: torch.Tensor, values: torch.Tensor, batch: int) -> torch.Tensor:
        """(P,) flat pixel ids and (P, C) values -> (B, C, H, W) image, 0 elsewhere (keeps autograd)."""
        channels = values.shape[1]
        flat = values.new_zeros(batch * self.height * self.width, channels).index_put((pixel_ids,), values)
        return flat.view(batch, self.height, self.width, channels).permute(0, 3, 1, 2).contiguous()
