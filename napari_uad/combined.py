"""The combined detection map: several maps put on one scale by their healthy-calibration quantiles.

Each component map m becomes its *surprise* s_m = -log10(1 - q_m), where q_m is the voxel's quantile among
the healthy calibration voxels of that map (the card's ``calibration.maps[m]`` table, ``healthy_quantile``);
s = 2 means "as high as the top 1 % of healthy voxels", 3 the top 0.1 %, capped at ``MAX_SURPRISE`` (the
table's resolution). The combined map is the mean surprise of the components, so a voxel has to be unusual in
every component to score high. Which components: chosen by ``calibration.calibrate`` on validation data only
(card ``calibration.combined.components``). Unitless; same voxel grid as the component maps.

Tables per contrast (card ``calibration.combined.tables_by_contrast``, where a calibration made them): a scan whose
contrast the tissue fit recognises (``tissue.scan_contrast``: dark or bright fluid) has its components measured
against the healthy volumes of that contrast only -- what is normal in a T2 scan's CSF is not normal in a T1
scan's; any other scan against the pooled tables. Components per contrast (``calibration.combined.
components_by_contrast``, where a calibration was given them): a scan of that contrast combines those maps instead.

A dark channel per contrast (card ``calibration.combined.dark_components_by_contrast``, where a calibration was
given one): the combined map of a scan of that contrast is the larger of two means, the components' (the bright
channel) and the dark channel's. A dark-channel component ``-NAME`` is the signed map NAME negated (positive where
the scan is darker than its tissue, or than its mirror voxel), measured against its own healthy table
(``calibration.maps["-NAME"]``); unsigned maps (E) enter both channels as they are. So a region darker than its
tissue (an infarct's cavity on T1, a black hole) can score as high as a bright one, and it still has to be
unusual in every map of its channel. Where the card says so (``calibration.combined.dark_opening_mm``), the dark
channel is opened by a ball that wide before the maximum (``postprocess.open_map``, applied by the caller, who knows
the grid): thin dark shells -- ventricle rims, sulcal CSF -- lose their values, a dark region thicker than the ball
keeps its own, and bright findings are untouched.

Tables per tissue class (card ``calibration.combined.tables_by_tissue``, where a calibration was asked for
them): on a scan of that contrast, a listed component is measured against the healthy voxels of the tissue the
aligned template expects at each voxel (``tissue.prior_classes``: CSF, GM, WM) instead of all healthy voxels --
what is normal for the model's error in a T2 scan's CSF is not normal in its white matter. Voxels without a class
(no template alignment) keep the contrast's table.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from .tissue import TISSUES

__all__ = ["COMBINED", "MAX_SURPRISE", "NEGATED", "SIGNED_MAPS", "healthy_quantile", "surprise", "component_table",
           "component_values", "base_map", "combine", "combined_components", "dark_components", "all_components",
           "contrast_tables", "tissue_tables", "dark_opening_mm"]

COMBINED = "combined"
MAX_SURPRISE = 5.0  # -log10 of the finest tail level of the quantile tables (1e-5)
NEGATED = "-"  # prefix of a dark-channel component: the signed map negated
SIGNED_MAPS = ("signed_residual", "z", "tissue", "asymmetry")  # the maps whose sign means brighter / darker
# (z: the signed normalised error (x - mu) / sigma, brighter or darker than the model's reconstruction)


def base_map(name: str) -> str:
    """The map a component is computed from: ``-tissue`` -> ``tissue``; other names unchanged."""
    return name[len(NEGATED):] if name.startswith(NEGATED) else name


def component_values(maps: Mapping[str, np.ndarray], name: str) -> np.ndarray:
    """Component ``name``'s values from the scored maps: ``maps[name]``, or a signed map negated for ``-NAME``."""
    if name in maps or not name.startswith(NEGATED):
        return maps[name]
    return -np.asarray(maps[base_map(name)])


def healthy_quantile(scores: np.ndarray, table: Mapping) -> np.ndarray:
    """Raw scores -> healthy-voxel quantile in [0, 1] (float64) by linear interpolation in a card's table
    (``{"quantiles": map values, "levels": quantile levels}``)."""
    values, levels = np.asarray(table["quantiles"], np.float64), np.asarray(table["levels"], np.float64)
    return np.interp(np.asarray(scores, np.float64), values, levels)


def surprise(scores: np.ndarray, table: Mapping) -> np.ndarray:
    """Raw map values -> -log10(1 - healthy quantile), in [0, MAX_SURPRISE] (float32)."""
    q = healthy_quantile(scores, table)
    return np.minimum(-np.log10(np.maximum(1.0 - q, 10.0 ** -MAX_SURPRISE)), MAX_SURPRISE).astype(np.float32)


def contrast_tables(calibration: Mapping) -> dict:
    """The combined map's healthy tables per recognised contrast in a card's calibration: contrast -> {map name:
    quantile values at ``calibration["levels"]``}; {} where the calibration made none."""
    return dict((calibration.get(COMBINED) or {}).get("tables_by_contrast") or {})


def component_table(calibration: Mapping, name: str, contrast: str | None = None) -> dict:
    """The healthy table (``{"quantiles", "levels"}``) the combined map measures component ``name`` against on a
    scan of ``contrast``: that contrast's own table where the calibration has one, else the pooled
    ``calibration["maps"][name]`` table."""
    own = contrast_tables(calibration).get(contrast or "", {})
    quantiles = own[name] if name in own else calibration["maps"][name]["quantiles"]
    return {"quantiles": quantiles, "levels": calibration["levels"]}


def tissue_tables(calibration: Mapping, contrast: str | None) -> dict:
    """Component -> its healthy tables per tissue class (``{"csf": quantile values, "gm": ..., "wm": ...}`` at
    ``calibration["levels"]``) for a scan of ``contrast``; {} where the calibration made none for it."""
    spec = calibration.get(COMBINED) or {}
    return dict((spec.get("tables_by_tissue") or {}).get(contrast or "") or {})


def _component_surprise(values: np.ndarray, calibration: Mapping, name: str, contrast: str | None,
                        classes: np.ndarray | None) -> np.ndarray:
    """Component ``name``'s surprise: against its tissue class's table where the card has them for ``contrast`` and
    ``classes`` (``tissue.prior_classes``, same shape as ``values``) gives the class, else ``component_table``."""
    by_class = tissue_tables(calibration, contrast).get(name)
    if by_class is None or classes is None:
        return surprise(values, component_table(calibration, name, contrast))
    s = np.empty(values.shape, np.float32)
    unclassed = (classes < 0) | (classes >= len(TISSUES))
    if unclassed.any():
        s[unclassed] = surprise(values[unclassed], component_table(calibration, name, contrast))
    for c, tissue in enumerate(TISSUES):
        here = classes == c
        if here.any():
            s[here] = surprise(values[here], {"quantiles": by_class[tissue], "levels": calibration["levels"]})
    return s


def _mean_surprise(maps: Mapping[str, np.ndarray], calibration: Mapping, components: Sequence[str],
                   contrast: str | None, classes: np.ndarray | None) -> np.ndarray:
    total = None
    for name in components:
        s = _component_surprise(np.asarray(component_values(maps, name)), calibration, name, contrast, classes)
        total = s if total is None else total + s
    return total / np.float32(len(components))


def combine(maps: Mapping[str, np.ndarray], calibration: Mapping, components: Sequence[str],
            contrast: str | None = None, dark: Sequence[str] = (), classes: np.ndarray | None = None,
            open_dark: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Mean surprise of ``components``, each against ``component_table`` for a scan of ``contrast`` (or its tissue
    class's table, ``tissue_tables``, where ``classes`` gives each voxel's); with a ``dark`` channel, the voxelwise
    larger of that mean and the dark components' mean (passed through ``open_dark`` first where given: the card's
    ``dark_opening_mm`` in the maps' grid)."""
    bright = _mean_surprise(maps, calibration, components, contrast, classes)
    if not dark:
        return bright
    channel = _mean_surprise(maps, calibration, dark, contrast, classes)
    return np.maximum(bright, channel if open_dark is None else open_dark(channel))


def dark_opening_mm(calibration: Mapping) -> float:
    """The width (world mm) of the ball the dark channel is opened by (card ``calibration.combined.
    dark_opening_mm``); 0.0 = not opened."""
    return float((calibration.get(COMBINED) or {}).get("dark_opening_mm") or 0.0)


def combined_components(calibration: Mapping, contrast: str | None = None) -> tuple[str, ...]:
    """Components recorded in a card's calibration for a scan of ``contrast``: that contrast's own
    (``combined.components_by_contrast``) where the card has them, else the pooled ones; () when the card has no
    combined map."""
    spec = calibration.get(COMBINED) or {}
    own = (spec.get("components_by_contrast") or {}).get(contrast or "")
    names = tuple(own or spec.get("components", ()))
    return names if names and all(n in calibration.get("maps", {}) for n in names) else ()


def dark_components(calibration: Mapping, contrast: str | None = None) -> tuple[str, ...]:
    """The dark channel recorded in a card's calibration for a scan of ``contrast``
    (``combined.dark_components_by_contrast``); () where it has none, or a table is missing."""
    spec = calibration.get(COMBINED) or {}
    names = tuple((spec.get("dark_components_by_contrast") or {}).get(contrast or "") or ())
    return names if names and all(n in calibration.get("maps", {}) for n in names) else ()


def all_components(calibration: Mapping) -> tuple[str, ...]:
    """Every map the combined map may need, whatever the scan's contrast (pooled components first; a dark
    channel's ``-NAME`` as the scored map NAME)."""
    spec = calibration.get(COMBINED) or {}
    names = [*combined_components(calibration)]
    for contrast in spec.get("components_by_contrast") or {}:
        names += [n for n in combined_components(calibration, contrast) if n not in names]
    for contrast in spec.get("dark_components_by_contrast") or {}:
        names += [n for n in map(base_map, dark_components(calibration, contrast)) if n not in names]
    return tuple(names)
