"""Volume input/output.

Reading gives a :class:`Volume` whose ``data`` is float32 in the closest canonical orientation (RAS+: index i
increases towards patient Right, j towards Anterior, k towards Superior), reached by axis flips and permutations
only, never by resampling. Axial slices are ``data[:, :, k]``.

Writing always goes back to the *original* file's voxel grid and affine (world RAS mm), so a written map
overlays the scan in any viewer. Oblique affines are kept as they are.

Coordinate frames used here:
- canonical voxel (i, j, k): index into ``Volume.data``;
- original voxel: index into the array as stored in the source file (nibabel order for NIfTI; (x, y, z)
  = ITK index order for NRRD/MetaImage/DICOM);
- world: RAS millimetres (NIfTI convention; ITK's LPS is converted on read and write).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import (
    aff2axcodes,
    apply_orientation,
    inv_ornt_aff,
    io_orientation,
    ornt_transform,
)

from .sequence import sequence_from_bids, sequence_from_dicom_tags

__all__ = [
    "Volume",
    "VolumeError",
    "read_volume",
    "write_like",
    "write_image_file",
    "file_sha256",
    "file_stem",
    "atomic_write",
    "to_sitk_image",
    "LPS_TO_RAS",
    "NIFTI_SUFFIXES",
    "ITK_SUFFIXES",
]

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class VolumeError(ValueError):
    """A volume cannot be used; ``str(err)`` is one line naming the file and the problem."""

    def __init__(self, path: str | os.PathLike | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


@dataclass
class Volume:
    """A 3D scan in canonical RAS+ orientation with everything needed to write results back.

    Attributes:
        data: float32 array (i, j, k), canonical RAS+ index order; k is the axial (inferior->superior) axis.
        affine: 4x4, canonical voxel index -> world RAS mm.
        original_affine: 4x4, original voxel index -> world RAS mm (as read from the file).
        original_shape: shape of the array as stored in the file.
        ornt: nibabel orientation transform from the original array to ``data``.
        path: source file or DICOM directory (None for in-memory volumes).
        modality: "MR" or "CT".
        metadata: facts about the scan beyond its voxels: ``contrast_agent`` (str) when the DICOM series
            (Contrast/Bolus Agent, 0018,0010) or its BIDS name/sidecar declares one; ``sequence`` (a key of
            ``sequence.SEQUENCES``) and ``sequence_source`` (where it was read: "DICOM header", "BIDS name", or
            what a caller sets, e.g. "--sequence") when the scan declares its MR sequence; ``true_brain`` (bool
            mask, canonical grid) for synthetic heads.
    """

    data: np.ndarray
    affine: np.ndarray
    original_affine: np.ndarray
    original_shape: tuple[int, int, int]
    ornt: np.ndarray
    path: Path | None = None
    modality: str = "MR"
    metadata: dict = field(default_factory=dict)

    @classmethod
    def from_array(
        cls,
        data: np.ndarray,
        affine: np.ndarray,
        path: str | os.PathLike | None = None,
        modality: str | None = None,
        allow_constant: bool = False,
    ) -> "Volume":
        """Build a volume from an array in *original* order and its voxel->world RAS mm affine.

        ``allow_constant`` is for label and mask volumes, which may legitimately be all zero.
        """
        data = np.asarray(data)
        affine = np.asarray(affine, dtype=np.float64)
        _check_array(data, path, allow_constant)
        ornt = io_orientation(affine)
        canonical = np.ascontiguousarray(apply_orientation(data, ornt), dtype=np.float32)
        canonical_affine = affine @ inv_ornt_aff(ornt, data.shape)
        return cls(
            data=canonical,
            affine=canonical_affine,
            original_affine=affine,
            original_shape=tuple(int(s) for s in data.shape),
            ornt=ornt,
            path=None if path is None else Path(path),
            modality=modality or guess_modality(canonical),
        )

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.data.shape)

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size in mm along canonical (i, j, k)."""
        return np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))

    @property
    def voxel_volume_mm3(self) -> float:
        return float(abs(np.linalg.det(self.affine[:3, :3])))

    @property
    def original_axcodes(self) -> tuple[str, str, str]:
        """Orientation codes of the stored array, e.g. ('L', 'P', 'S') for an ITK LPS file."""
        return tuple(aff2axcodes(self.original_affine))

    @property
    def axcodes(self) -> tuple[str, str, str]:
        """Orientation codes of ``data`` (('R', 'A', 'S') unless the affine is degenerate)."""
        return tuple(aff2axcodes(self.affine))

    def to_original(self, array: np.ndarray) -> np.ndarray:
        """Reorient an array in canonical (i, j, k) order back to the original file's voxel order."""
        if array.shape[:3] != self.shape:
            raise ValueError(f"array shape {array.shape} does not match volume shape {self.shape}")
        back = ornt_transform(np.column_stack([np.arange(3), np.ones(3)]), self.ornt)
        return np.ascontiguousarray(apply_orientation(array, back))

    def canonical_to_world(self, ijk: np.ndarray) -> np.ndarray:
        """Canonical voxel coordinates (N, 3) -> world RAS mm (N, 3)."""
        ijk = np.atleast_2d(np.asarray(ijk, dtype=np.float64))
        return ijk @ self.affine[:3, :3].T + self.affine[:3, 3]

    def canonical_to_original_index(self, ijk: np.ndarray) -> np.ndarray:
        """Canonical voxel coordinates (N, 3) -> original file voxel coordinates (N, 3) (exact: flips/permutes)."""
        world = self.canonical_to_world(ijk)
        inv = np.linalg.inv(self.original_affine)
        return world @ inv[:3, :3].T + inv[:3, 3]

    @property
    def axial_original_axis(self) -> int:
        """Which axis of the original array is the canonical axial (k) axis."""
        return int(np.flatnonzero(self.ornt[:, 0] == 2)[0])

    def sha256(self) -> str:
        """sha256 of the source file (or of a DICOM directory's files), or of the data for in-memory volumes."""
        if self.path is not None and self.path.exists():
            return file_sha256(self.path)
        return hashlib.sha256(np.ascontiguousarray(self.data).tobytes()).hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, or of all files of a directory (sorted by name, names included)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            digest.update(str(f.relative_to(path)).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def guess_modality(data: np.ndarray) -> str:
    """CT if the intensities look like Hounsfield units (air near -1000 HU), else MR."""
    lo, hi = np.percentile(data[:: max(1, data.size // 200_000)], [0.5, 99.5]) if data.size else (0, 0)
    return "CT" if lo < -500 and hi > 0 else "MR"


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in NIFTI_SUFFIXES[::-1] + ITK_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return path.suffix.lower()


def file_stem(path: str | os.PathLike) -> str:
    """File name without its image suffix (``scan.nii.gz`` -> ``scan``); a directory keeps its name."""
    name = Path(path).name
    suffix = _suffix(Path(path))
    return name[: -len(suffix)] if suffix in NIFTI_SUFFIXES + ITK_SUFFIXES else name


def _check_array(data: np.ndarray, path, allow_constant: bool = False) -> None:
    if data.ndim == 2 or (data.ndim == 3 and min(data.shape) < 2):
        raise VolumeError(path, f"is 2D (shape {data.shape}); a 3D volume is needed")
    if data.ndim != 3:
        raise VolumeError(path, f"has {data.ndim} dimensions (shape {data.shape}); only 3D scalar volumes are supported")
    if not np.issubdtype(data.dtype, np.number) or np.iscomplexobj(data):
        raise VolumeError(path, f"has unsupported data type {data.dtype}")
    if not np.isfinite(data).all():
        raise VolumeError(path, "contains NaN or Inf values")
    if not allow_constant and data.min() == data.max():
        raise VolumeError(path, f"is constant (every voxel is {data.flat[0]})")


def read_volume(path: str | os.PathLike, modality: str | None = None, allow_constant: bool = False) -> Volume:
    """Read a NIfTI, NRRD, MetaImage file or a DICOM series directory.

    Args:
        path: file or directory.
        modality: "MR" or "CT" to override; default from DICOM tags, else from the intensity range.
        allow_constant: accept an all-constant volume (masks and label maps; never for scans).

    Raises:
        VolumeError: one-line message naming the file and what is wrong with it.
    """
    path = Path(path)
    if not path.exists():
        raise VolumeError(path, "file not found")
    if modality is not None and modality not in ("MR", "CT"):
        raise VolumeError(path, f"unknown modality {modality!r} (use MR or CT)")
    if path.is_dir():
        data, affine, tag_modality, agent, tags = _read_dicom_series(path)
        sequence, source = sequence_from_dicom_tags(tags), "DICOM header"
    else:
        suffix = _suffix(path)
        if suffix in NIFTI_SUFFIXES:
            data, affine = _read_nifti(path)
        elif suffix in ITK_SUFFIXES:
            data, affine = _read_itk(path)
        else:
            raise VolumeError(
                path, f"unsupported file type {suffix or '(none)'}; use .nii, .nii.gz, .nrrd, .nhdr, .mha, .mhd "
                "or a DICOM directory"
            )
        tag_modality, agent = None, _bids_contrast_agent(path)
        sequence, source = sequence_from_bids(path, file_stem(path)), "BIDS name"
    volume = Volume.from_array(
        data, affine, path=path, modality=modality or tag_modality, allow_constant=allow_constant
    )
    if agent:
        volume.metadata["contrast_agent"] = agent
    if sequence:
        volume.metadata.update(sequence=sequence, sequence_source=source)
    return volume


def _bids_contrast_agent(path: Path) -> str | None:
    """The contrast agent a BIDS-named file declares: its JSON sidecar's ``ContrastBolusIngredient`` (e.g.
    GADOLINIUM), else the ``ce-<label>`` entity of its name (``sub-01_ce-gd_T1w.nii.gz``); None when neither."""
    import json

    sidecar = path.with_name(file_stem(path) + ".json")
    if sidecar.is_file():
        try:
            ingredient = json.loads(sidecar.read_text(encoding="utf-8")).get("ContrastBolusIngredient")
        except (OSError, ValueError, AttributeError):
            ingredient = None  # an unreadable sidecar says nothing about the scan; the image is still read
        agent = _contrast_agent(ingredient) if isinstance(ingredient, str) else None
        if agent:
            return agent
    entity = re.search(r"(?:^|_)ce-([A-Za-z0-9]+)(?:_|$)", file_stem(path))
    return _contrast_agent(entity.group(1)) if entity else None


_NO_AGENT = ("", "NONE", "NO", "N/A", "NA", "-")


def _contrast_agent(text: str) -> str | None:
    """A declared contrast agent, or None for an empty value or a word for none (DICOM's Contrast/Bolus Agent
    is often present but empty, and some scanners write NONE)."""
    text = text.strip(" \0")
    return None if text.upper() in _NO_AGENT else text


def _read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        img = nib.load(str(path))
        if len(img.shape) == 4 and img.shape[3] == 1:
            img = img.slicer[..., 0]
        if len(img.shape) != 3:
            raise VolumeError(path, f"has shape {img.shape}; only 3D scalar volumes are supported (4D/vector given)"
                              if len(img.shape) > 3 else f"is {len(img.shape)}D (shape {img.shape}); a 3D volume is needed")
        if img.get_data_dtype().names is not None:
            raise VolumeError(path, "is an RGB/vector image; only scalar volumes are supported")
        _check_nifti_size(path, img)
        data = np.asarray(img.get_fdata(dtype=np.float32))  # applies scl_slope / scl_inter
        return data, np.asarray(img.affine, dtype=np.float64)
    except VolumeError:
        raise
    except Exception as err:  # nibabel raises many types for corrupt files (EOFError, zlib.error, ...)
        raise VolumeError(path, f"cannot be read as NIfTI ({_short(err)})") from err


MAX_VOXELS = 1024**3  # a sane maximum for one scan (4 GiB as float32)


def _check_nifti_size(path: Path, img) -> None:
    """Refuse a header that claims more voxels than the file holds (or than any scan has) before allocating."""
    n = int(np.prod(img.shape, dtype=np.int64))
    if n > MAX_VOXELS:
        raise VolumeError(path, f"header claims {'x'.join(map(str, img.shape))} voxels, more than the {MAX_VOXELS} "
                                "a scan may have")
    needed = int(img.header.get_data_offset()) + n * img.get_data_dtype().itemsize
    if str(path).lower().endswith(".gz"):
        with open(path, "rb") as fh:  # gzip's trailer: uncompressed size mod 2^32 (scans are < 4 GiB)
            fh.seek(-4, os.SEEK_END)
            available = int.from_bytes(fh.read(4), "little")
        needed %= 2**32
    else:
        available = path.stat().st_size
    if available < needed:
        raise VolumeError(path, f"header claims {'x'.join(map(str, img.shape))} voxels ({needed} bytes) but the "
                                f"file holds {available} bytes (truncated or corrupt)")


def _short(err: Exception) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text[:200]


def _sitk_to_array_affine(img, path: Path) -> tuple[np.ndarray, np.ndarray]:
    import SimpleITK as sitk

    if img.GetNumberOfComponentsPerPixel() != 1:
        raise VolumeError(path, f"has {img.GetNumberOfComponentsPerPixel()} components per voxel; only scalar "
                                "volumes are supported (4D/vector given)")
    if img.GetDimension() != 3:
        raise VolumeError(path, f"is {img.GetDimension()}D; a 3D volume is needed")
    data = sitk.GetArrayViewFromImage(img).transpose(2, 1, 0).astype(np.float32)  # (z,y,x) -> ITK index (x,y,z)
    direction = np.array(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = direction @ np.diag(img.GetSpacing())
    lps[:3, 3] = img.GetOrigin()
    return data, LPS_TO_RAS @ lps


def _read_itk(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import SimpleITK as sitk

    try:
        img = sitk.ReadImage(str(path))
    except Exception as err:
        raise VolumeError(path, f"cannot be read ({_short(err)})") from err
    return _sitk_to_array_affine(img, path)


def _check_slice_positions(reader, img, path: Path) -> None:
    """Refuse a series whose slices are not evenly spaced (a missing or duplicated slice): averaging the
    spacing would misplace everything below the gap. Positions (0020,0032) projected on the slice normal."""
    positions = []
    for i in range(img.GetDepth()):
        if not reader.HasMetaDataKey(i, "0020|0032"):
            return  # no positions to check (SimpleITK then used the spacing it was given)
        positions.append([float(v) for v in reader.GetMetaData(i, "0020|0032").split("\\")])
    normal = np.asarray(img.GetDirection(), dtype=float).reshape(3, 3)[:, 2]
    steps = np.diff(np.sort(np.asarray(positions) @ normal))
    if steps.size == 0:
        return
    typical = float(np.median(steps))
    bad = np.flatnonzero(np.abs(steps - typical) > max(0.01 * typical, 1e-3))
    if bad.size:
        k = int(bad[0])
        raise VolumeError(path, f"slice positions are not evenly spaced: {steps[k]:.3g} mm between slices {k + 1} "
                                f"and {k + 2} where the others are {typical:.3g} mm apart (a slice is missing or "
                                "duplicated); export the complete series")


def _read_dicom_series(path: Path) -> tuple[np.ndarray, np.ndarray, str | None, str | None, dict[str, str]]:
    """(data, affine, modality tag, contrast agent tag (0018,0010) or None, the first slice's tags that say the
    sequence: ``_SEQUENCE_TAGS``) of the directory's largest series."""
    import SimpleITK as sitk

    try:
        series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path))
    except Exception as err:
        raise VolumeError(path, f"cannot be scanned for DICOM ({_short(err)})") from err
    if not series_ids:
        raise VolumeError(path, "is a directory without a DICOM series")
    # the series with most files is the scan; others (localisers, reports) are ignored
    files_per_series = {sid: sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), sid) for sid in series_ids}
    files = max(files_per_series.values(), key=len)
    if len(files) < 2:
        raise VolumeError(path, "holds a single DICOM slice; a 3D series is needed")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        img = reader.Execute()
    except Exception as err:
        raise VolumeError(path, f"DICOM series cannot be read ({_short(err)})") from err
    _check_slice_positions(reader, img, path)
    modality = None
    if reader.HasMetaDataKey(0, "0008|0060"):
        tag = reader.GetMetaData(0, "0008|0060").strip().upper()
        modality = tag if tag in ("MR", "CT") else None
    agent = _contrast_agent(reader.GetMetaData(0, "0018|0010")) if reader.HasMetaDataKey(0, "0018|0010") else None
    tags = {t: reader.GetMetaData(0, t) for t in _SEQUENCE_TAGS if reader.HasMetaDataKey(0, t)}
    data, affine = _sitk_to_array_affine(img, path)
    return data, affine, modality, agent, tags


# Series Description, Protocol Name, Sequence Name, Scanning Sequence, Inversion Time
_SEQUENCE_TAGS = ("0008|103e", "0018|1030", "0018|0024", "0018|0020", "0018|0082")


@contextmanager
def atomic_write(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path (same multi-part suffix) to write to; on success it replaces ``final``
    in one step, on error it is removed, so ``final`` is never left half-written."""
    final = Path(final)
    fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=f".part{_suffix(final)}", dir=final.parent)
    os.close(fd)
    tmp = Path(name)
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp (and some writers) create 0600; give the usual permissions
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_image_file(path: str | os.PathLike, data: np.ndarray, affine: np.ndarray, description: str = "") -> Path:
    """Write ``data`` (stored array order) with voxel->world RAS mm ``affine``, atomically.

    NIfTI through nibabel (qform and sform both set, units mm; ``description`` in the header's ``descrip``, at
    most 79 characters); NRRD/MetaImage through SimpleITK (converted to LPS; needs an orthogonal direction
    matrix).
    """
    path = Path(path)
    suffix = _suffix(path)
    if suffix not in NIFTI_SUFFIXES + (".nrrd", ".mha"):
        raise ValueError(f"{path}: cannot write {suffix} files; use .nii.gz, .nii, .nrrd or .mha")
    with atomic_write(path) as tmp:
        if suffix in NIFTI_SUFFIXES:
            img = nib.Nifti1Image(np.asarray(data), np.asarray(affine, dtype=np.float64))
            img.header.set_xyzt_units("mm")
            img.set_qform(affine, code=1)
            img.set_sform(affine, code=1)
            if description:
                img.header["descrip"] = description.encode("ascii", "replace")[:79]
            nib.save(img, str(tmp))
        else:
            import SimpleITK as sitk

            sitk.WriteImage(to_sitk_image(data, affine), str(tmp), True)
    return path


def to_sitk_image(data: np.ndarray, affine: np.ndarray):
    """SimpleITK image of ``data`` (array index order (i, j, k)) with voxel->world RAS mm ``affine``.

    ITK's physical space is LPS: origin and direction are converted; the direction must be orthogonal.
    """
    import SimpleITK as sitk

    lps = LPS_TO_RAS @ np.asarray(affine, dtype=np.float64)
    spacing = np.sqrt((lps[:3, :3] ** 2).sum(axis=0))
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(data).transpose(2, 1, 0)))
    img.SetSpacing(spacing.tolist())
    img.SetOrigin(lps[:3, 3].tolist())
    img.SetDirection((lps[:3, :3] / spacing).ravel().tolist())
    return img


def write_like(volume: Volume, array: np.ndarray, path: str | os.PathLike, dtype=np.float32,
               description: str = "") -> Path:
    """Write a map or label array given in *canonical* (i, j, k) order in the volume's original grid and affine
    (``description``: NIfTI ``descrip``, e.g. the map and model)."""
    original = volume.to_original(np.asarray(array)).astype(dtype, copy=False)
    return write_image_file(path, original, volume.original_affine, description)
