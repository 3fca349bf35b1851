"""What a model expects of its input (stored in the model card) and what one run switches off."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

__all__ = ["PreprocessingConfig", "PipelineOptions", "SKULL_STRIP_MODES"]

SKULL_STRIP_MODES = ("auto", "on", "off")


@dataclass(frozen=True)
class PreprocessingConfig:
    """How a scan is turned into model input; stored in the model card.

    normalisation: "zscore" (mean/std of brain voxels), "robust" (median and IQR/1.349 of brain voxels: a
        lesion moves them less) or "window" (linear map of ``window`` intensities onto ``clip``, CT).
    clip: model input range after normalisation; the background outside the brain gets ``clip[0]``.
    window: (low, high) intensity window for "window" normalisation.
    margin: fraction of the brain's in-plane extent added on each side of the model field of view.
    skull_strip: the model expects brain-only input: scans with skull and scalp are brain-extracted.
    bias_correction: N4 bias-field correction inside the brain before normalisation.
    template: name of the template space the model was trained in (scans are aligned to it to feed the
        model, maps come back to the scan's grid), or None to score the scan's own axial slices.
    """

    normalisation: str = "zscore"
    clip: tuple[float, float] = (-3.0, 3.0)
    window: tuple[float, float] | None = None
    margin: float = 0.05
    skull_strip: bool = False
    bias_correction: bool = False
    template: str | None = None

    def __post_init__(self):
        if self.normalisation not in ("zscore", "robust", "window"):
            raise ValueError(f"unknown normalisation {self.normalisation!r} (zscore, robust or window)")
        if self.normalisation == "window" and self.window is None:
            raise ValueError("window normalisation needs a (low, high) window")
        if not self.clip[0] < self.clip[1]:
            raise ValueError(f"clip range {self.clip} is empty")

    @property
    def background(self) -> float:
        return float(self.clip[0])

    @property
    def value_range(self) -> float:
        return float(self.clip[1] - self.clip[0])

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessingConfig":
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        for key in ("clip", "window"):
            if d.get(key) is not None:
                d[key] = tuple(float(v) for v in d[key])
        return cls(**d)


@dataclass(frozen=True)
class PipelineOptions:
    """Per-run switches over the model's preprocessing (for users who preprocess themselves).

    skull_strip: "auto" (brain-extract only scans that still have skull and scalp, when the model expects
        brain-only input), "on" (always brain-extract), "off" (never: the foreground is used as brain).
    bias_correction, alignment, normalisation: False switches the step off even if the model's card asks
        for it (normalisation off: the scan's values are only clipped to the model's range).
    device: where brain extraction runs ("cpu", "cuda", ...).
    """

    skull_strip: str = "auto"
    bias_correction: bool = True
    alignment: bool = True
    normalisation: bool = True
    device: str = "cpu"

    def __post_init__(self):
        if self.skull_strip not in SKULL_STRIP_MODES:
            raise ValueError(f"unknown skull-strip mode {self.skull_strip!r} (auto, on or off)")

    def to_dict(self) -> dict:
        return asdict(self)
