"""napari-uad: unsupervised anomaly detection (ceVAE) in MR/CT volumes — library, CLI and napari plugin.

Core modules, in the order of the method: ``io`` (volumes) -> ``mask`` / ``preprocessing`` / ``slices``
-> ``model`` / ``model_card`` -> ``scoring`` (maps) -> ``findings`` -> ``export``; ``pipeline`` ties them
together for one scan and ``cli`` exposes them on the command line. None of them imports Qt.
"""

__version__ = "0.1.0"
