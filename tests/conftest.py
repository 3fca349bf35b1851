"""Shared fixtures: a tiny randomly initialised model saved through the real card + safetensors path, and
small synthetic head-like volumes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_uad.model import ArchitectureConfig, CeVAE
from napari_uad.model_card import ModelCard, ScoringConfig, save_model
from napari_uad.preprocessing import PreprocessingConfig

torch.set_num_threads(2)

TINY_ARCH = ArchitectureConfig(input_size=32, channels=(8, 16, 32), latent=16, kernel=4)


def make_tiny_model(directory, margin: float = 0.05, samples: int = 2, sigma: float = 3.0) -> ModelCard:
    torch.manual_seed(0)
    model = CeVAE(TINY_ARCH)
    card = ModelCard(
        name="tiny-test", version="0.0.1", description="randomly initialised test model",
        preprocessing=PreprocessingConfig(margin=margin),
        scoring=ScoringConfig(smoothgrad_samples=samples, grad_smoothing_sigma=sigma),
        calibration={"detection_map": "residual", "maps": {"residual": {"threshold": 1.0}}},
    )
    return save_model(model, card, directory)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny_model")
    make_tiny_model(directory)
    return directory


def head_phantom(shape=(40, 44, 24), seed: int = 0, lesion: bool = True) -> np.ndarray:
    """Ellipsoid 'head' with two tissue classes, noise, zero background and optionally a bright blob."""
    rng = np.random.default_rng(seed)
    i, j, k = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r = np.sqrt((i / 0.8) ** 2 + (j / 0.85) ** 2 + (k / 0.8) ** 2)
    data = np.where(r < 1, 100.0, 0.0) + np.where(r < 0.6, 50.0, 0.0)
    data += np.where(r < 1, rng.normal(0, 5, shape), 0.0)
    if lesion:
        blob = (i - 0.3) ** 2 + (j + 0.2) ** 2 + (k - 0.1) ** 2 < 0.2**2
        data[blob] = 400.0
    return data.astype(np.float32)


def _start_xvfb_if_needed() -> None:
    """GUI tests need a display: start a private Xvfb when there is none and Xvfb is installed."""
    import atexit
    import os
    import shutil
    import subprocess
    import time

    if os.environ.get("DISPLAY") or not shutil.which("Xvfb"):
        return
    for number in range(90, 120):
        if os.path.exists(f"/tmp/.X11-unix/X{number}") or os.path.exists(f"/tmp/.X{number}-lock"):
            continue
        proc = subprocess.Popen(["Xvfb", f":{number}", "-screen", "0", "1600x1200x24", "-nolisten", "tcp"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(50):
            if os.path.exists(f"/tmp/.X11-unix/X{number}"):
                break
            time.sleep(0.1)
        if proc.poll() is None:
            os.environ["DISPLAY"] = f":{number}"
            atexit.register(proc.terminate)
            return


def pytest_configure(config):
    _start_xvfb_if_needed()
