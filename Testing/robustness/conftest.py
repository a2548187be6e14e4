"""Good inputs of every kind, made once, from which the robustness tests derive their bad ones."""

from __future__ import annotations

import numpy as np
import pytest

from WeakSegLib.config import TightenerCase, TightenerConfig, TrainCase, TrainConfig
from WeakSegLib.engine.train.training import train
from WeakSegLib.io.boxes import BoxSet, boxes_from_mask, save_boxes
from WeakSegLib.io.partial import partial_from_mask
from WeakSegLib.io.sizes import SizeSet, save_sizes, sizes_from_mask
from WeakSegLib.io.volume import Volume, write_volume
from WeakSegLib.tightener.training import train_tightener

SMALL = (4, 8, 16, 32, 64)


@pytest.fixture(scope="session")
def good(tmp_path_factory):
    """Paths of a small image (12×24×24, 1.5 mm), its mask, slice boxes, 3D boxes, sizes, partial labels,
    a trained model and a trained tightener."""
    folder = tmp_path_factory.mktemp("good")
    mask = np.zeros((12, 24, 24), np.uint8)
    mask[2:10, 5:17, 6:18] = 1
    image = (100.0 * mask + np.random.default_rng(0).normal(0, 10, mask.shape)).astype(np.float32)
    volume = Volume(image, (1.5, 1.5, 1.5))
    paths = {name: folder / name for name in ("image.nii.gz", "mask.nii.gz", "boxes.json", "boxes3d.json",
                                              "sizes.json", "partial.nii.gz")}
    write_volume(volume, paths["image.nii.gz"])
    write_volume(volume.with_array(mask), paths["mask.nii.gz"])
    save_boxes(BoxSet(boxes_from_mask(mask, "slice", 0), mask.shape, {1: "cube"}, volume.geometry()), paths["boxes.json"])
    save_boxes(BoxSet(boxes_from_mask(mask, "3d"), mask.shape, {1: "cube"}, volume.geometry()), paths["boxes3d.json"])
    save_sizes(SizeSet(sizes_from_mask(mask, 0), mask.shape, 0, {1: "cube"}, volume.geometry()), paths["sizes.json"])
    write_volume(volume.with_array(partial_from_mask(mask, 0, 1, 2)[0]), paths["partial.nii.gz"])
    out = {name.split(".")[0]: str(path) for name, path in paths.items()}
    train([TrainCase(out["image"], mask=out["mask"])], TrainConfig(recipe="full", epochs=1, channels=SMALL,
                                                                   device="cpu"), folder / "model")
    train_tightener([TightenerCase(out["image"], out["mask"])], TightenerConfig(patch=8, epochs=1, device="cpu"),
                    folder / "tightener")
    return {**out, "model": str(folder / "model"), "tightener": str(folder / "tightener"), "volume": volume,
            "array": mask}
