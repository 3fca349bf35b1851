"""Screenshots of the "Anomaly review" widget for the README (run under Xvfb: ``xvfb-run -a python ...``).

Usage: python docs/make_screenshots.py [--model NAME|PATH] [--out docs] [--scan FILE --name PNG]
Opens the bundled sample scan through the plugin's sample-data entry, scores it with the model, shows the
findings at the calibrated threshold, saves ``screenshot_scored.png``, tags every finding as a reviewer with the
sample's ground truth would (TP where it overlaps an inserted lesion, else FP: the actions of the T and F keys)
and saves ``screenshot_tagged.png`` at the second finding. With ``--scan``, opens that file through the
plugin's reader instead, scores it and saves only ``--name`` (the first finding selected).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent))
    parser.add_argument("--scan", default=None, help="a scan file to show instead of the bundled sample")
    parser.add_argument("--name", default="screenshot_scan.png", help="--scan: file name of the screenshot")
    args = parser.parse_args()
    os.environ.setdefault("NAPARI_UAD_HOME", tempfile.mkdtemp())  # do not touch the user's review sessions

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_uad._sample_data import SAMPLE_MASK, sample_brain
    from napari_uad._widget import AnomalyReviewWidget
    from napari_uad.io import read_volume
    from napari_uad.model_card import resolve_model
    from napari_uad.resources import sample_data_dir

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1700, 1200)  # tall enough to show the whole dock
    if args.scan:
        from napari_uad._reader import get_reader

        layers = get_reader(args.scan)(args.scan)
    else:
        layers = sample_brain()
    for data, kwargs, kind in layers:
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    widget = AnomalyReviewWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Anomaly review", area="right")
    widget.add_model(str(resolve_model(args.model)))
    done = []
    widget.scoring_finished.connect(done.append)
    widget.score_button.click()
    while not done:
        QApplication.processEvents()
    if not done[0]:
        raise SystemExit("scoring failed")
    widget.select_finding(0)
    for _ in range(5):
        QApplication.processEvents()
    out = Path(args.out)
    if args.scan:
        viewer.screenshot(str(out / args.name), canvas_only=False)
        print(f"{len(widget.view.findings)} findings; warnings: {widget.scan.warnings}")
        viewer.close()
        return
    viewer.screenshot(str(out / "screenshot_scored.png"), canvas_only=False)
    truth = read_volume(sample_data_dir() / SAMPLE_MASK, allow_constant=True).data > 0  # the scan's voxel grid
    for finding in widget.view.findings:  # finding 0 is current (selected above); each tag moves to the next
        widget.tag_current("TP" if truth[widget.view.labels == finding.finding_id].any() else "FP")
    widget.select_finding(1)
    for _ in range(5):
        QApplication.processEvents()
    viewer.screenshot(str(out / "screenshot_tagged.png"), canvas_only=False)
    print(f"{len(widget.view.findings)} findings; tags: "
          f"{ {k: v['tag'] for k, v in widget.review.reviews.items()} }")
    viewer.close()


if __name__ == "__main__":
    main()
