"""A built wheel carries the bundled models and sample data and finds them at run time when installed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_installed_wheel_finds_bundled_files(tmp_path):
    wheel_dir, target = tmp_path / "dist", tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheel_dir), str(REPO)], check=True)
    wheel = next(wheel_dir.glob("napari_uad-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                    str(wheel)], check=True)
    probe = (
        "import json, napari_uad, napari_uad.resources as r, napari_uad.model_card as mc;"
        "print(json.dumps({'pkg': napari_uad.__file__, 'models': str(r.bundled_models_dir()),"
        " 'sample': str(r.sample_data_dir()), 'listed': sorted(mc.list_models())}))"
    )
    env = {**os.environ, "PYTHONPATH": str(target), "NAPARI_UAD_MODELS": str(tmp_path / "no_user_models")}
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                         check=True).stdout
    found = json.loads(out)
    assert found["pkg"].startswith(str(target))  # imported from the installed wheel, not the checkout
    for key, folder in (("models", "models"), ("sample", "sample_data")):
        installed = Path(found[key])
        assert installed.is_relative_to(target)
        expected = sorted(p.relative_to(REPO / folder) for p in (REPO / folder).rglob("*") if p.is_file())
        assert expected, f"{folder}/ is empty"
        for rel in expected:
            assert (installed / rel).read_bytes() == (REPO / folder / rel).read_bytes()
    bundled = sorted(p.parent.name for p in (REPO / "models").glob("*/card.json"))
    assert found["listed"] == bundled
