"""Review keys: what a set of finding ids depends on, so a saved review is found again only for the same findings."""

from napari_uad.review import ReviewKey


def test_a_review_key_changes_with_the_minimum_thickness_and_old_keys_stay_valid():
    """Reviews saved before the minimum thickness existed (no thickness = 0) keep their file name; a thickness
    changes the findings' ids, so it changes the key. The digest below is the one the key had before the field was
    added (sha256 of its sorted JSON, first 24 hex digits)."""
    import hashlib
    import json

    fields = dict(scan_sha256="abc", model_name="m", model_version="1", model_sha256="def", detection_map="combined",
                  threshold=2.5, min_volume_mm3=50.0, connectivity=3)
    before = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:24]
    assert ReviewKey(**fields).digest == before
    assert ReviewKey(**fields, min_thickness_mm=0.0).digest == before
    assert ReviewKey(**fields, min_thickness_mm=4.0).digest not in (before, ReviewKey(**fields, min_thickness_mm=3.0).digest)
