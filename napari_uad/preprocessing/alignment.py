"""Alignment to the model's template space (affine, SimpleITK) and exact-geometry resampling between grids.

The scan's brain mask is registered to the template's brain mask (mean squares on the masks, which is blind
to contrast, so T1, T2, FLAIR and PD align alike, and to the intensity of a lesion inside the brain). The
result is one 4x4 matrix ``template_to_scan`` (world RAS mm -> world RAS mm). Voxel maps between the grids:

    scan voxel = inv(A_scan) @ template_to_scan @ A_template @ template voxel

is used to resample the scan into the template grid (model input) and its inverse to bring every map back
onto the scan's own voxels; nothing else about the scan's geometry is changed.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..io import LPS_TO_RAS, to_sitk_image

__all__ = ["register_to_template", "register_rigid", "register_deformable", "resample", "voxel_map", "AlignmentError"]

_SCALE_RANGE = (0.6, 1.6)  # per-axis scale a real brain can need to fit the template; else registration failed
_REGISTRATION_MM = 3.0  # masks are block-averaged to about this voxel size before registration


def _block_mean(mask: np.ndarray, affine: np.ndarray, target_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Mask averaged over blocks of ~``target_mm`` (float32 fractions) and the affine of the block grid."""
    spacing = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    f = [max(1, int(round(target_mm / s))) for s in spacing]
    x = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
    small = F.avg_pool3d(x, kernel_size=f, stride=f, ceil_mode=True)[0, 0].numpy()
    # ceil_mode averages a partial last block over its valid voxels only (count_include_pad has no padding here)
    block = np.eye(4)
    block[:3, :3] = np.diag(f)
    block[:3, 3] = (np.asarray(f) - 1) / 2.0
    return small, np.asarray(affine) @ block


class AlignmentError(ValueError):
    """Registration gave an implausible transform; the message is one line."""


def _matrix(transform) -> np.ndarray:
    """4x4 matrix (LPS mm -> LPS mm) of an affine SimpleITK transform, from the images of 4 points."""
    p0 = np.array(transform.TransformPoint((0.0, 0.0, 0.0)))
    m = np.eye(4)
    for axis in range(3):
        e = np.zeros(3)
        e[axis] = 1.0
        m[:3, axis] = np.array(transform.TransformPoint(tuple(e))) - p0
    m[:3, 3] = p0
    return m


def register_to_template(mask: np.ndarray, affine: np.ndarray, template_mask: np.ndarray,
                         template_affine: np.ndarray) -> np.ndarray:
    """Affine ``template_to_scan`` (4x4, world RAS mm -> world RAS mm) aligning a brain mask to the template's.

    ``mask``/``affine``: the scan's brain mask and its voxel->RAS affine; likewise for the template. Initialised
    by the masks' centres and principal axes (moments), refined by gradient descent over two resolutions
    on masks block-averaged to ~3 mm (at 6 and 3 mm). Deterministic (regular sampling, one thread). Raises AlignmentError for a scale outside
    0.6-1.6 (a partial field of view or a failed brain mask).
    """
    import SimpleITK as sitk

    fixed = to_sitk_image(*_block_mean(template_mask, template_affine, _REGISTRATION_MM))
    moving = to_sitk_image(*_block_mean(mask, affine, _REGISTRATION_MM))
    init = sitk.CenteredTransformInitializer(fixed, moving, sitk.AffineTransform(3),
                                             sitk.CenteredTransformInitializerFilter.MOMENTS)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMeanSquares()
    reg.SetMetricSamplingStrategy(reg.REGULAR)
    reg.SetMetricSamplingPercentage(0.5, 1)  # fixed seed: ITK perturbs the regular grid randomly
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-3, numberOfIterations=200,
                                                 relaxationFactor=0.5)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([2, 1])
    reg.SetSmoothingSigmasPerLevel([4.0, 2.0])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    reg.SetInitialTransform(init, inPlace=False)
    reg.SetNumberOfThreads(1)
    transform = reg.Execute(fixed, moving)
    template_to_scan = LPS_TO_RAS @ _matrix(transform) @ LPS_TO_RAS
    scales = np.linalg.svd(template_to_scan[:3, :3], compute_uv=False)
    if scales.min() < _SCALE_RANGE[0] or scales.max() > _SCALE_RANGE[1]:
        raise AlignmentError(f"alignment to the template failed (scales {np.round(scales, 2).tolist()}); "
                             "the brain mask or field of view may be incomplete")
    return template_to_scan


def register_rigid(fixed: np.ndarray, moving: np.ndarray, affine: np.ndarray, target_mm: float = _REGISTRATION_MM
                   ) -> np.ndarray:
    """Rigid ``T`` (4x4, world RAS mm -> world RAS mm) with moving(T p) ~ fixed(p): two images of the same content
    in one grid (voxel->RAS ``affine``), e.g. a brain and its mirror image.

    Both are block-averaged to ~``target_mm``, then mean squares, initialised by the identity about the grid's
    centre and refined over two resolutions; regular sampling and one thread, so deterministic.
    """
    import SimpleITK as sitk

    fixed_img = to_sitk_image(*_block_mean(fixed, affine, target_mm))
    moving_img = to_sitk_image(*_block_mean(moving, affine, target_mm))
    init = sitk.CenteredTransformInitializer(fixed_img, moving_img, sitk.Euler3DTransform(),
                                             sitk.CenteredTransformInitializerFilter.GEOMETRY)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMeanSquares()
    reg.SetMetricSamplingStrategy(reg.REGULAR)
    reg.SetMetricSamplingPercentage(0.5, 1)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-3, numberOfIterations=200,
                                                 relaxationFactor=0.5)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([2, 1])
    reg.SetSmoothingSigmasPerLevel([2.0 * target_mm, 0.0])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    reg.SetInitialTransform(init, inPlace=False)
    reg.SetNumberOfThreads(1)
    transform = reg.Execute(fixed_img, moving_img)
    return LPS_TO_RAS @ _matrix(transform) @ LPS_TO_RAS


def register_deformable(fixed: np.ndarray, moving: np.ndarray, spacing: tuple[float, float, float],
                        smoothing_mm: float, target_mm: float = 2.0, iterations: int = 40) -> np.ndarray:
    """Displacement field ``d`` [3, *fixed.shape] in voxels of the common grid with moving(v + d(v)) ~ fixed(v):
    two images of the same kind of intensity in one grid of voxel size ``spacing`` (mm).

    Both are block-averaged to ~``target_mm``; ITK's diffeomorphic demons then runs ``iterations`` steps, each
    update smoothed by a Gaussian of ``smoothing_mm`` (world mm; larger = smoother and slower to grow); the field is
    interpolated back to the full grid (trilinear, edge values beyond the last block centres). No random sampling,
    one thread: deterministic. Voxels where the two images agree exert no force, so a region can be left out of
    the match by giving it the moving image's values in ``fixed``.
    """
    import SimpleITK as sitk

    def image(a: np.ndarray, block_spacing: np.ndarray):
        img = sitk.GetImageFromArray(np.ascontiguousarray(a.transpose(2, 1, 0), dtype=np.float32))
        img.SetSpacing(block_spacing.tolist())
        return img

    affine = np.diag([*map(float, spacing), 1.0])
    small_fixed, block_affine = _block_mean(fixed, affine, target_mm)
    small_moving, _ = _block_mean(moving, affine, target_mm)
    block_spacing = np.diag(block_affine)[:3]
    demons = sitk.DiffeomorphicDemonsRegistrationFilter()
    demons.SetNumberOfIterations(iterations)
    demons.SetMaximumRMSError(1e-6)  # run every iteration (the default stops early on images that mostly agree)
    demons.SetSmoothDisplacementField(False)
    demons.SetSmoothUpdateField(True)  # fluid-like: each step smoothed, so large moves (a wide ventricle) can build up
    demons.SetUpdateFieldStandardDeviations(float(smoothing_mm))  # physical units (the filter uses the spacing)
    demons.SetNumberOfThreads(1)
    field = demons.Execute(image(small_fixed, block_spacing), image(small_moving, block_spacing))
    d_mm = sitk.GetArrayFromImage(field).transpose(3, 2, 1, 0)  # [3 (x=i, y=j, z=k), i, j, k] in mm
    factor = np.rint(block_spacing / np.asarray(spacing, np.float64))
    grid = np.meshgrid(*[(np.arange(n) - (f - 1) / 2.0) / f for n, f in zip(fixed.shape, factor)], indexing="ij")
    from scipy import ndimage

    return np.stack([ndimage.map_coordinates(d_mm[axis] / float(spacing[axis]), grid, order=1, mode="nearest")
                     for axis in range(3)]).astype(np.float32)


def voxel_map(out_affine: np.ndarray, in_affine: np.ndarray, out_to_in_world: np.ndarray | None = None
              ) -> np.ndarray:
    """4x4 matrix from output voxel indices to input voxel indices (both grids given by voxel->RAS affines)."""
    world = np.eye(4) if out_to_in_world is None else out_to_in_world
    return np.linalg.inv(in_affine) @ world @ out_affine


def resample(arrays: np.ndarray, out_to_in: np.ndarray, out_shape: tuple[int, int, int], fill: float = 0.0,
             slab: int = 16) -> np.ndarray:
    """Trilinear resampling of ``arrays`` [C, i, j, k] at ``out_to_in`` @ (output voxel) -> [C, *out_shape].

    Output voxels that fall outside the input grid get ``fill``. Computed in slabs of output planes (torch
    grid_sample, float32), so memory stays small for 256^3 volumes.
    """
    x = torch.from_numpy(np.ascontiguousarray(arrays, dtype=np.float32) - np.float32(fill))[None]
    n_in = np.asarray(arrays.shape[1:], dtype=np.float64)
    m = torch.from_numpy(out_to_in).double()
    jj, kk = torch.meshgrid(torch.arange(out_shape[1], dtype=torch.float64),
                            torch.arange(out_shape[2], dtype=torch.float64), indexing="ij")
    out = np.empty((arrays.shape[0], *out_shape), dtype=np.float32)
    scale = torch.from_numpy(2.0 / np.maximum(n_in - 1, 1))
    for start in range(0, out_shape[0], slab):
        ii = torch.arange(start, min(start + slab, out_shape[0]), dtype=torch.float64)
        pts = torch.stack(torch.broadcast_tensors(ii[:, None, None], jj[None], kk[None]), dim=-1)
        src = pts @ m[:3, :3].T + m[:3, 3]  # input voxel (i, j, k)
        grid = (src * scale - 1.0).flip(-1).float()[None]  # grid_sample wants (x, y, z) = (k, j, i)
        sampled = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        out[:, start:start + len(ii)] = sampled[0].numpy() + np.float32(fill)
    return out
