"""The npe2 manifest is valid and every command it names imports."""

import importlib
from pathlib import Path

import pytest

npe2 = pytest.importorskip("npe2")


def test_manifest_validates_and_commands_import():
    manifest = npe2.PluginManifest.from_file(Path(__file__).resolve().parents[1] / "napari_uad" / "napari.yaml")
    assert manifest.name == "napari-uad"
    assert [w.display_name for w in manifest.contributions.widgets] == ["Anomaly review"]
    patterns = manifest.contributions.readers[0].filename_patterns
    assert {"*.nii", "*.nii.gz", "*.nrrd", "*.nhdr", "*.mha", "*.mhd"} <= set(patterns)
    assert manifest.contributions.readers[0].accepts_directories
    for command in manifest.contributions.commands:
        module, attr = command.python_name.split(":")
        assert callable(getattr(importlib.import_module(module), attr)), command.id


def test_installed_plugin_is_discovered():
    pm = npe2.PluginManager.instance()
    pm.discover()
    assert "napari-uad" in pm._manifests
