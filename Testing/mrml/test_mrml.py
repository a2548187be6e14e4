"""WeakSegLib.mrml against the real MRML classes of slicer-core (scene wiring: conftest.py)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import vtk
from synthetic import oblique_volume

from WeakSegLib import mrml
from WeakSegLib.errors import InputError
from WeakSegLib.io.boxes import Box, BoxSet
from WeakSegLib.io.volume import Volume, read_volume, write_volume
from WeakSegLib.mrml import nodes


def _oblique_volume(shape=(6, 9, 11)) -> Volume:
    """Random voxels on a grid with anisotropic spacing, an offset origin and a rotated, left-handed direction."""
    volume = oblique_volume(np.random.default_rng(0).normal(size=shape).astype(np.float32))
    volume.direction = tuple((np.reshape(volume.direction, (3, 3)) @ np.diag([1.0, -1.0, 1.0])).reshape(-1))
    return volume


def _load_with_slicer(path, scene, labelmap=False):
    """Read a file the way Slicer does: an archetype storage node into a volume node."""
    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode")
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(node), f"Slicer could not read {path}"
    return node


def _voxel_centres_world(node) -> np.ndarray:
    """World RAS of every voxel centre, shape (z, y, x, 3): the slow reference for index mapping."""
    shape = mrml.volume_shape(node)
    matrix = mrml.ijk_to_world(node)
    k, j, i = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    ijk1 = np.stack([i, j, k, np.ones_like(i)], axis=-1).astype(float)
    return (ijk1 @ matrix.T)[..., :3]


def _inside_roi(points: np.ndarray, roi) -> np.ndarray:
    """Whether world points lie inside the ROI (its own box coordinates), with a small tolerance."""
    to_world = nodes._to_world(roi) @ slicer.util.arrayFromVTKMatrix(roi.GetObjectToNodeMatrix())
    local = (np.c_[points.reshape(-1, 3), np.ones(points[..., 0].size)] @ np.linalg.inv(to_world).T)[:, :3]
    half = np.asarray(roi.GetSize()) / 2 + 1e-6
    return (np.abs(local) <= half).all(axis=1).reshape(points.shape[:-1])


# --- volumes -----------------------------------------------------------------------------------------

def _index_to_lps(volume: Volume) -> np.ndarray:
    """4×4 matrix from ITK index (x, y, z) to LPS mm."""
    matrix = np.eye(4)
    matrix[:3, :3] = np.reshape(volume.direction, (3, 3)) * np.asarray(volume.spacing)
    matrix[:3, 3] = volume.origin
    return matrix


def _assert_same_physical_image(got: Volume, expected: Volume) -> None:
    """Every voxel of ``got`` sits on a voxel centre of ``expected`` holding the same value (slow reference)."""
    assert sorted(got.shape) == sorted(expected.shape)
    np.testing.assert_allclose(sorted(got.spacing), sorted(expected.spacing), atol=1e-6)
    to_expected = np.linalg.inv(_index_to_lps(expected)) @ _index_to_lps(got)
    for zyx in np.ndindex(*got.shape):
        xyz = (to_expected @ [*zyx[::-1], 1.0])[:3]
        np.testing.assert_allclose(xyz, np.round(xyz), atol=1e-4)
        assert got.array[zyx] == expected.array[tuple(np.round(xyz).astype(int)[::-1])]


@pytest.mark.parametrize("handedness", ["right", "left"])
def test_file_read_by_slicer_matches_simpleitk(wired, tmp_path, handedness):
    volume = _oblique_volume()
    if handedness == "right":
        volume.direction = tuple((np.reshape(volume.direction, (3, 3)) @ np.diag([1.0, -1.0, 1.0])).reshape(-1))
    path = write_volume(volume, tmp_path / "oblique.nrrd")
    got = mrml.volume_from_node(_load_with_slicer(path, wired.scene))
    expected = read_volume(path)
    _assert_same_physical_image(got, expected)
    if handedness == "right":  # Slicer keeps a right-handed grid as it is ...
        np.testing.assert_array_equal(got.array, expected.array)
        np.testing.assert_allclose(got.direction, expected.direction, atol=1e-6)
    else:  # ... and reverses the slice order of a left-handed one: same image, other index order.
        np.testing.assert_array_equal(got.array, expected.array[::-1])


def test_node_written_by_slicer_reads_back_in_simpleitk(wired, tmp_path):
    volume = _oblique_volume()
    node = mrml_add_volume(volume)
    storage = wired.scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(tmp_path / "written.nrrd"))
    assert storage.WriteData(node)
    image = sitk.ReadImage(str(tmp_path / "written.nrrd"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), volume.array)
    np.testing.assert_allclose(image.GetSpacing(), volume.spacing, atol=1e-6)
    np.testing.assert_allclose(image.GetOrigin(), volume.origin, atol=1e-5)
    np.testing.assert_allclose(image.GetDirection(), volume.direction, atol=1e-6)


def mrml_add_volume(volume, labelmap=False):
    return mrml.add_volume_node(volume, "volume", labelmap=labelmap)


def test_linear_parent_transform_moves_the_geometry(wired):
    volume = _oblique_volume()
    node = mrml_add_volume(volume)
    transform = wired.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    shift = vtk.vtkMatrix4x4()
    shift.SetElement(0, 3, 5.0)  # +5 mm towards R, i.e. -5 mm in LPS x
    transform.SetMatrixTransformToParent(shift)
    node.SetAndObserveTransformNodeID(transform.GetID())
    moved = mrml.volume_from_node(node)
    np.testing.assert_allclose(np.subtract(moved.origin, volume.origin), (-5.0, 0.0, 0.0), atol=1e-6)


def test_bad_volumes_are_refused(wired):
    with pytest.raises(InputError, match="no volume"):
        mrml.volume_from_node(wired.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty"))
    bad = _oblique_volume()
    bad.array[2, 3, 4] = np.nan
    with pytest.raises(InputError, match="NaN|finite"):
        mrml.volume_from_node(mrml_add_volume(bad))
    vector = wired.scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "rgb")
    image = vtk.vtkImageData()
    image.SetDimensions(4, 3, 2)
    image.AllocateScalars(vtk.VTK_FLOAT, 3)
    vector.SetAndObserveImageData(image)
    with pytest.raises(InputError, match="3 components"):
        mrml.volume_from_node(vector)


# --- ROI nodes ↔ boxes -------------------------------------------------------------------------------

def test_boxes_round_trip_through_roi_nodes_on_an_oblique_volume(wired):
    volume = _oblique_volume()
    node = mrml_add_volume(volume)
    axis = mrml.slice_axis(node)
    boxes = [Box((1, 2, 3), (5, 7, 9), 1, "3d"), Box((2, 0, 0), (3, 9, 11), 2, "slice", 0),
             Box((0, 4, 1), (6, 5, 10), 1, "3d")]
    rois = mrml.roi_nodes_from_boxes(BoxSet(boxes, volume.shape, {1: "liver", 2: "kidney"}), node)
    back = mrml.boxes_from_roi_nodes(rois, node, labels={1: "liver", 2: "kidney"}, axis=axis)
    assert back.warnings == []
    assert back.boxset.boxes == boxes
    assert back.boxset.labels == {1: "liver", 2: "kidney"}
    # Reference: the voxels whose centres lie in each ROI are exactly the box's voxels.
    centres = _voxel_centres_world(node)
    for box, roi in zip(boxes, rois):
        expected = np.zeros(volume.shape, bool)
        expected[box.slices()] = True
        np.testing.assert_array_equal(_inside_roi(centres, roi), expected)


def test_user_roi_gives_the_voxels_whose_centres_it_holds(wired):
    volume = _oblique_volume((8, 10, 12))
    node = mrml_add_volume(volume)
    centres = _voxel_centres_world(node)
    roi = wired.scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "drawn")
    # Aligned with the voxel grid (as Slicer aligns an ROI placed in a slice view), at an arbitrary place.
    matrix = mrml.ijk_to_world(node)
    rotation = matrix[:3, :3] / np.linalg.norm(matrix[:3, :3], axis=0)
    to_node = np.eye(4)
    to_node[:3, :3] = rotation
    to_node[:3, 3] = (matrix @ [5.3, 4.1, 3.7, 1.0])[:3]
    roi.SetAndObserveObjectToNodeMatrix(slicer.util.vtkMatrixFromArray(to_node))
    roi.SetSize(4.9, 6.2, 7.7)
    box, warnings = mrml.box_from_roi(roi, node)
    assert warnings == []
    inside = np.argwhere(_inside_roi(centres, roi))
    assert box.start == tuple(inside.min(axis=0)) and box.stop == tuple(inside.max(axis=0) + 1)
    assert box.kind == "3d"


def test_oblique_roi_uses_the_enclosing_box_and_says_so(wired):
    volume = Volume(np.zeros((10, 20, 20), np.float32), (1.0, 1.0, 2.0))
    node = mrml_add_volume(volume)
    roi = wired.scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "tilted")
    rotate = vtk.vtkTransform()
    rotate.RotateZ(30)
    rotate.PostMultiply()
    rotate.Translate(-9.5, -9.5, 9.0)  # RAS of LPS (9.5, 9.5, 9)
    roi.SetAndObserveObjectToNodeMatrix(rotate.GetMatrix())
    roi.SetSize(8, 4, 6)
    box, warnings = mrml.box_from_roi(roi, node)
    assert any("rotated" in w for w in warnings)
    inside = np.argwhere(_inside_roi(_voxel_centres_world(node), roi))
    assert (inside.min(axis=0) >= box.start).all() and (inside.max(axis=0) < box.stop).all()
    # The enclosing box is larger than the ROI's voxels (a 30° rotation widens x and y).
    assert np.prod(box.size) > len(inside)


def test_thin_roi_is_a_slice_box_and_outside_rois_are_skipped(wired):
    volume = Volume(np.zeros((10, 20, 30), np.float32), (0.8, 0.8, 3.0), (4.0, -2.0, 10.0))
    node = mrml_add_volume(volume)
    matrix = mrml.ijk_to_world(node)
    thin = wired.scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "on slice 4")
    thin.SetCenter(*(matrix @ [10.0, 8.0, 4.0, 1.0])[:3])
    thin.SetSize(8.0, 6.0, 0.0)
    partly_out = wired.scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "partly out")
    partly_out.SetCenter(*(matrix @ [0.0, 0.0, 5.0, 1.0])[:3])
    partly_out.SetSize(4.0, 4.0, 9.0)
    outside = wired.scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "far away")
    outside.SetCenter(500.0, 500.0, 500.0)
    result = mrml.boxes_from_roi_nodes([thin, partly_out, outside], node)
    slice_box, clipped = result.boxset.boxes
    assert (slice_box.kind, slice_box.axis, slice_box.start[0], slice_box.stop[0]) == ("slice", 0, 4, 5)
    assert clipped.start[1:] == (0, 0) and clipped.kind == "3d"
    assert any("clipped" in w and "partly out" in w for w in result.warnings)
    assert any("far away" in w and "skipped" in w for w in result.warnings)
    with pytest.raises(InputError, match="far away"):
        mrml.boxes_from_roi_nodes([outside], node)


def test_roi_under_a_transform_is_read_in_world_coordinates(wired):
    volume = Volume(np.zeros((10, 20, 30), np.float32))
    node = mrml_add_volume(volume)
    roi = wired.scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "moved")
    roi.SetCenter(-10.0, -8.0, 4.0)  # LPS (10, 8, 4): voxel (4, 8, 10)
    roi.SetSize(2.0, 2.0, 2.0)
    before, _ = mrml.box_from_roi(roi, node)
    transform = wired.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    shift = vtk.vtkMatrix4x4()
    shift.SetElement(2, 3, 3.0)  # 3 mm superior
    transform.SetMatrixTransformToParent(shift)
    roi.SetAndObserveTransformNodeID(transform.GetID())
    after, _ = mrml.box_from_roi(roi, node)
    assert before.start == (3, 7, 9) and after.start == (6, 7, 9)


# --- segmentations -----------------------------------------------------------------------------------

def test_labelmap_to_segmentation_and_back(wired, tmp_path):
    volume = _oblique_volume((8, 12, 10))
    node = mrml_add_volume(volume)
    labels = np.zeros(volume.shape, np.uint8)
    labels[2:6, 3:8, 2:7] = 1
    labels[1:3, 8:11, 5:9] = 2
    names = {1: {"name": "liver", "color": [0.9, 0.3, 0.2]}, 2: {"name": "kidney", "color": [0.2, 0.5, 0.9]},
             3: {"name": "spleen", "color": [0.1, 0.8, 0.1]}}
    segmentation = mrml.segmentation_from_labelmap(labels, node, names, name="prediction")
    seg = segmentation.GetSegmentation()
    assert [seg.GetNthSegment(i).GetName() for i in range(seg.GetNumberOfSegments())] == ["liver", "kidney", "spleen"]
    np.testing.assert_allclose(seg.GetNthSegment(1).GetColor(), [0.2, 0.5, 0.9])
    assert segmentation.GetNodeReferenceID(segmentation.GetReferenceImageGeometryReferenceRole()) in (None, node.GetID())
    back, back_labels = mrml.labelmap_from_segmentation(segmentation, node)
    np.testing.assert_array_equal(back, labels)
    assert [v["name"] for v in back_labels.values()] == ["liver", "kidney", "spleen"]
    assert not [n for n in wired.scene.GetNodesByClass("vtkMRMLLabelMapVolumeNode")], "temporary nodes left behind"
    assert not [n for n in wired.scene.GetNodesByClass("vtkMRMLColorTableNode") if n.GetName().startswith("__weakseg")]
    # the order of the label table, not of the values, and every entry, the empty ones included
    reordered = {3: names[3], 2: names[2], 1: names[1]}
    again = mrml.segmentation_from_labelmap(labels, node, reordered, name="reordered").GetSegmentation()
    assert [again.GetNthSegment(i).GetName() for i in range(3)] == ["spleen", "kidney", "liver"]
    np.testing.assert_allclose(again.GetNthSegment(0).GetColor(), [0.1, 0.8, 0.1])
    # Replacing the content keeps one node and drops the old segments.
    mrml.segmentation_from_labelmap(labels == 1, node, {1: names[1]}, segmentation_node=segmentation)
    assert seg.GetNumberOfSegments() == 1
    # Saved the way Slicer saves it, the file holds the labels on the volume's grid.
    storage = wired.scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(tmp_path / "prediction.seg.nrrd"))
    assert storage.WriteData(segmentation)
    assert (tmp_path / "prediction.seg.nrrd").stat().st_size > 0


def test_segmentation_input_errors(wired):
    node = mrml_add_volume(Volume(np.zeros((4, 5, 6), np.float32)))
    with pytest.raises(InputError, match="does not fit"):
        mrml.segmentation_from_labelmap(np.zeros((4, 5, 7), np.uint8), node, {1: {"name": "a"}})
    with pytest.raises(InputError, match=r"\[2\]"):
        mrml.segmentation_from_labelmap(np.full((4, 5, 6), 2, np.uint8), node, {1: {"name": "a"}})
    empty = wired.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "nothing")
    with pytest.raises(InputError, match="no segments"):
        mrml.labelmap_from_segmentation(empty, node)


# --- training curves ---------------------------------------------------------------------------------

def test_training_curves_table_and_chart(wired):
    curves = mrml.TrainingCurves("run 1")
    events = [{"event": "start", "epochs": 3}, {"event": "epoch", "epoch": 1, "loss": 0.9, "dice": 0.4},
              {"event": "batch", "epoch": 2}, {"event": "epoch", "epoch": 2, "loss": 0.5},
              {"event": "epoch", "epoch": 3, "loss": 0.3, "dice": 0.8}]
    assert [curves.add(e) for e in events] == [False, True, False, True, True]
    np.testing.assert_allclose(curves.rows(), [[1, 0.9, 0.4], [2, 0.5, np.nan], [3, 0.3, 0.8]])
    assert curves.chart.GetNumberOfPlotSeriesNodes() == 2
    assert {curves.chart.GetNthPlotSeriesNode(i).GetYColumnName() for i in range(2)} == {"loss", "dice"}
    assert all(s.GetTableNode() is curves.table for s in curves.series.values())


def test_training_curves_of_a_second_run_reuse_the_nodes(wired):
    """Every run used to add a table, a chart and two series: a run of the same name now empties and reuses
    them; another name gets its own."""
    first = mrml.TrainingCurves("WeakSeg train")
    first.add({"event": "epoch", "epoch": 1, "loss": 0.9, "dice": 0.4})
    again = mrml.TrainingCurves("WeakSeg train")
    assert (again.table, again.chart) == (first.table, first.chart)
    assert [again.series[c].GetID() for c in ("loss", "dice")] == [first.series[c].GetID() for c in ("loss", "dice")]
    assert again.rows().shape == (0, 3) and again.chart.GetNumberOfPlotSeriesNodes() == 2
    again.add({"event": "epoch", "epoch": 1, "loss": 0.7, "dice": 0.5})
    np.testing.assert_allclose(again.rows(), [[1, 0.7, 0.5]])
    other = mrml.TrainingCurves("WeakSeg tighten-train", metric="val_accuracy")
    assert other.table is not again.table and other.series["val_accuracy"].GetYColumnName() == "val_accuracy"
    counts = [wired.scene.GetNumberOfNodesByClass(c) for c in ("vtkMRMLTableNode", "vtkMRMLPlotChartNode",
                                                               "vtkMRMLPlotSeriesNode")]
    assert counts == [2, 2, 4]


def test_a_segmentation_file_written_here_opens_in_slicer_named_coloured_on_its_grid(wired, tmp_path):
    """``.seg.nrrd`` from :mod:`WeakSegLib.io.segfile`, read by Slicer's own segmentation storage node:
    every segment of the table (the empty one too) with its name, colour and voxels, on the volume's grid."""
    from WeakSegLib.io.segfile import write_segmentation
    from WeakSegLib.io.volume import read_label_volume

    volume = _oblique_volume((8, 12, 10))
    node = mrml_add_volume(volume)
    labels = np.zeros(volume.shape, np.uint8)
    labels[2:6, 3:8, 2:7] = 1
    labels[1:3, 8:11, 5:9] = 4
    table = [(4, "kidney", (0.2, 0.5, 0.9)), (1, "liver", (0.9, 0.3, 0.2)), (7, "spleen", (0.1, 0.8, 0.1))]
    path = write_segmentation(volume.with_array(labels), table, tmp_path / "case.seg.nrrd")
    np.testing.assert_array_equal(read_label_volume(path).array, labels)  # any NRRD reader: the label volume
    segmentation = wired.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = wired.scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(segmentation)
    seg = segmentation.GetSegmentation()
    assert [seg.GetNthSegment(i).GetName() for i in range(seg.GetNumberOfSegments())] == ["kidney", "liver", "spleen"]
    np.testing.assert_allclose(seg.GetNthSegment(0).GetColor(), [0.2, 0.5, 0.9], atol=1e-6)
    back, _ = mrml.labelmap_from_segmentation(segmentation, node)
    np.testing.assert_array_equal(back, np.select([labels == 4, labels == 1], [1, 2], 0))  # segment n → n + 1
    # The reference image geometry Slicer reads from the file is the volume's IJK→RAS matrix and extent, as
    # Slicer's own converter serialises them (a file dropped into Slicer converts on the scan's grid).
    converter = slicer.vtkSegmentationConverter
    stored = seg.GetConversionParameter(converter.GetReferenceImageGeometryParameterName())
    expected = converter.SerializeImageGeometry(_ijk_to_ras(node),
                                                [0, volume.shape[2] - 1, 0, volume.shape[1] - 1, 0, volume.shape[0] - 1])
    assert _geometry(stored) == pytest.approx(_geometry(expected))


def _ijk_to_ras(node):
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return matrix


def _geometry(serialised: str) -> list[float]:
    """A serialised image geometry as numbers (the 16 matrix entries, then the extent), via Slicer's parser."""
    matrix, extent = vtk.vtkMatrix4x4(), [0] * 6
    assert serialised and slicer.vtkSegmentationConverter.DeserializeImageGeometry(serialised, matrix, extent)
    return [matrix.GetElement(r, c) for r in range(4) for c in range(4)] + list(extent)
