"""Findings in the formats other tools read: 3D Slicer (``slicer``)."""
