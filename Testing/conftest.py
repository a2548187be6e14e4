"""Shared fixtures: real sample cases (docs/data.md) written once per session, small synthetic volumes."""

from __future__ import annotations

import pytest
import torch
from synthetic import oblique_volume, two_ellipsoids

from WeakSegLib.io.sample_data import materialize
from WeakSegLib.io.volume import read_label_volume, write_volume

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def spine_ct(tmp_path_factory):
    """TPTBox spine CT (73×47×73 at 1.5 mm) with its vertebrae as one object (label 1)."""
    return materialize("spine-ct", tmp_path_factory.mktemp("spine-ct"))


@pytest.fixture(scope="session")
def spine_boxes(spine_ct, tmp_path_factory):
    """Tight per-slice boxes (axial) of the spine CT's vertebrae, saved as a box file."""
    from WeakSegLib.io.boxes import BoxSet, boxes_from_mask, save_boxes

    mask = read_label_volume(spine_ct["mask"])
    path = tmp_path_factory.mktemp("boxes") / "boxes.json"
    save_boxes(BoxSet(boxes_from_mask(mask.array, "slice", spine_ct["axis"]), mask.shape, {1: "vertebrae"},
                      mask.geometry()), path)
    return str(path)


@pytest.fixture
def synthetic_case(tmp_path):
    """A 24×40×48 image with two bright ellipsoids (labels 1 and 2) and its mask, as files."""
    image, mask = two_ellipsoids()
    img_path, mask_path = tmp_path / "img.nrrd", tmp_path / "mask.nrrd"
    write_volume(oblique_volume(image), img_path)
    write_volume(oblique_volume(mask), mask_path)
    return {"image": str(img_path), "mask": str(mask_path), "array": mask}
