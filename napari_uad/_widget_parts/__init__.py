"""Parts of the review widget, one job each (see ``napari_uad._widget``)."""
