"""Slicer nodes ↔ WeakSegLib's arrays, boxes and events.

Geometry (docs/architecture.md): arrays are ``(z, y, x)`` as ``SimpleITK.GetArrayFromImage``; a voxel index
``(k, j, i)`` is Slicer's IJK ``(i, j, k)`` reversed. Slicer places voxels in RAS mm through the volume's
IJK→RAS matrix (and any linear parent transform); :class:`~WeakSegLib.io.volume.Volume` holds ITK's LPS
geometry. Every conversion between the two goes through :func:`ijk_to_world` here.

Boxes are half-open voxel ranges. An ROI covers voxel ``v`` when the voxel *centre* lies inside the ROI
(with a 1e-3 voxel tolerance), so an ROI drawn around voxel edges selects exactly those voxels and a
zero-thickness ROI on a slice centre selects that one slice.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from WeakSegLib import events
from WeakSegLib.errors import InputError
from WeakSegLib.io.boxes import Box, BoxSet, validate_boxes
from WeakSegLib.io.volume import Volume, axial_axis, check_finite

#: RAS ↔ LPS: flip the first two axes.
_LPS = np.diag([-1.0, -1.0, 1.0])
#: Node attributes that record what an ROI node stands for.
KIND_ATTRIBUTE = "WeakSeg.BoxKind"
LABEL_ATTRIBUTE = "WeakSeg.Label"
#: attribute of the table, chart and series nodes of :class:`TrainingCurves`: the curves' name
CURVES_ATTRIBUTE = "WeakSeg.Curves"
#: Tolerance (in voxels) for "the voxel centre lies inside the ROI" and "the ROI is axis-aligned".
_TOL = 1e-3


def _slicer():
    import slicer  # noqa: PLC0415  (MRML only; imported on use so WeakSegLib imports without Slicer)

    return slicer


def _to_world(node: Any) -> np.ndarray:
    """4×4 matrix from ``node``'s coordinates to world RAS; refuses non-linear parent transforms."""
    parent = node.GetParentTransformNode()
    if parent is None:
        return np.eye(4)
    if not parent.IsTransformToWorldLinear():
        raise InputError(f"'{node.GetName()}' is under a non-linear transform ('{parent.GetName()}'); harden it first")
    import vtk  # noqa: PLC0415

    matrix = vtk.vtkMatrix4x4()
    parent.GetMatrixTransformToWorld(matrix)
    return _slicer().util.arrayFromVTKMatrix(matrix)


def ijk_to_world(volume_node: Any) -> np.ndarray:
    """4×4 matrix from the volume's IJK indices to world RAS mm (parent transform included)."""
    import vtk  # noqa: PLC0415

    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return _to_world(volume_node) @ _slicer().util.arrayFromVTKMatrix(matrix)


def world_to_index(volume_node: Any, ras: Sequence[float]) -> np.ndarray:
    """Continuous voxel index ``(k, j, i)`` (array order) of the world RAS point ``ras`` (mm)."""
    ijk = np.linalg.solve(ijk_to_world(volume_node), np.r_[np.asarray(ras, dtype=float)[:3], 1.0])
    return ijk[2::-1]


# --- volumes -----------------------------------------------------------------------------------------

def volume_from_node(volume_node: Any) -> Volume:
    """The node's voxels ``(z, y, x)`` (a copy) with ITK geometry (spacing mm, LPS origin and direction).

    Raises :class:`InputError` for an empty node, a 4D (multi-component) volume or NaN/inf voxels.
    """
    if volume_node is None or volume_node.GetImageData() is None:
        raise InputError("no volume selected, or the volume holds no image data")
    image = volume_node.GetImageData()
    if image.GetNumberOfScalarComponents() != 1:
        raise InputError(f"'{volume_node.GetName()}' has {image.GetNumberOfScalarComponents()} components per voxel;"
                         " WeakSeg needs a 3D scalar volume (pick one frame or channel first)")
    array = np.array(_slicer().util.arrayFromVolume(volume_node), copy=True)
    if np.issubdtype(array.dtype, np.floating):
        check_finite(array, volume_node.GetName())
    grid = volume_from_node_geometry(volume_node)
    return Volume(array, grid.spacing, grid.origin, grid.direction)


def _set_geometry(node: Any, volume: Volume) -> None:
    node.SetIJKToRASMatrix(_slicer().util.vtkMatrixFromArray(volume.ijk_to_ras()))


def add_volume_node(volume: Volume, name: str, labelmap: bool = False, scene: Any = None) -> Any:
    """Add a scalar (or labelmap) volume node holding ``volume`` with its geometry; return it."""
    slicer = _slicer()
    scene = scene or slicer.mrmlScene
    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode", name)
    update_node_from_volume(node, volume)
    node.CreateDefaultDisplayNodes()
    return node


def update_node_from_volume(volume_node: Any, volume: Volume) -> None:
    """Replace the node's voxels and geometry with ``volume``'s."""
    _set_geometry(volume_node, volume)
    _slicer().util.updateVolumeFromArray(volume_node, np.ascontiguousarray(volume.array))


def slice_axis(volume_node: Any) -> int:
    """Array axis (0 = z, 1 = y, 2 = x) closest to the patient's superior–inferior axis (axial slices)."""
    return axial_axis(volume_from_node_geometry(volume_node).direction)


def _spacing_and_rotation(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Voxel size (mm) and RAS axis directions (columns) of an IJK→RAS matrix."""
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    return spacing, matrix[:3, :3] / spacing


def volume_from_node_geometry(volume_node: Any) -> Volume:
    """A 1-voxel :class:`Volume` carrying only the node's ITK geometry (cheap; no voxel copy)."""
    matrix = ijk_to_world(volume_node)
    spacing, rotation = _spacing_and_rotation(matrix)
    return Volume(np.zeros((1, 1, 1)), tuple(float(v) for v in spacing),
                  tuple(float(v) for v in _LPS @ matrix[:3, 3]), tuple(float(v) for v in (_LPS @ rotation).reshape(-1)))


def volume_shape(volume_node: Any) -> tuple[int, int, int]:
    """The node's voxel grid shape in array order ``(z, y, x)``."""
    dims = volume_node.GetImageData().GetDimensions()
    return int(dims[2]), int(dims[1]), int(dims[0])


def grid_geometry(volume_node: Any) -> dict:
    """The node's grid as :meth:`Volume.geometry` gives it (shape, spacing, origin, direction)."""
    geometry = volume_from_node_geometry(volume_node).geometry()
    geometry["shape"] = list(volume_shape(volume_node))
    return geometry


# --- ROI nodes ↔ boxes -------------------------------------------------------------------------------

@dataclass
class RoiConversion:
    """Boxes read from ROI nodes, and what was changed on the way (one message per ROI). ``boxset`` is
    None when no ROI gave a box and that was allowed (``empty_ok``)."""

    boxset: BoxSet | None
    warnings: list[str]


def _roi_corners_world(roi: Any) -> np.ndarray:
    """The ROI's 8 corners in world RAS mm, shape (8, 3)."""
    half = np.asarray(roi.GetSize(), dtype=float) / 2.0
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=float)
    corners = np.c_[signs * half, np.ones(8)]
    to_node = _slicer().util.arrayFromVTKMatrix(roi.GetObjectToNodeMatrix())
    return (corners @ (_to_world(roi) @ to_node).T)[:, :3]


def box_from_roi(roi: Any, volume_node: Any, axis: int | None = None) -> tuple[Box | None, list[str]]:
    """One ROI node as a box on ``volume_node``'s grid, plus warnings.

    The box is the axis-aligned index-space bounds of the ROI's corners, clipped to the volume. It is a
    slice box (along ``axis``, default: the axial axis) when the ROI node says so through its
    ``WeakSeg.BoxKind`` attribute, or when it covers exactly one slice along that axis; else a 3D box.
    Returns ``(None, [reason])`` when the ROI covers no voxel centre of the volume.
    """
    name = roi.GetName()
    shape = volume_shape(volume_node)
    axis = slice_axis(volume_node) if axis is None else axis
    world_to_ijk = np.linalg.inv(ijk_to_world(volume_node))
    corners = np.c_[_roi_corners_world(roi), np.ones(8)] @ world_to_ijk.T
    kji = corners[:, 2::-1]  # (8, 3) in array order (k, j, i)
    warnings: list[str] = []
    low, high = kji.min(axis=0), kji.max(axis=0)
    extent = np.ptp(kji, axis=0)
    # Axis-aligned in index space when every corner sits on one of the two bounds along every axis.
    on_bounds = np.minimum(np.abs(kji - low), np.abs(kji - high)) <= _TOL * np.maximum(extent, 1.0)
    if not on_bounds.all():
        warnings.append(f"ROI '{name}' is rotated against the volume's voxel grid: used the axis-aligned box around it")
    start = np.ceil(low - _TOL).astype(int)
    stop = np.floor(high + _TOL).astype(int) + 1
    clipped_start, clipped_stop = np.maximum(start, 0), np.minimum(stop, shape)
    if (clipped_stop <= clipped_start).any():
        return None, [f"ROI '{name}' covers no voxel of '{volume_node.GetName()}' (outside the volume or thinner "
                      "than one voxel between voxel centres): skipped"]
    if (clipped_start != start).any() or (clipped_stop != stop).any():
        warnings.append(f"ROI '{name}' reaches outside the volume: clipped to it")
    label = int(roi.GetAttribute(LABEL_ATTRIBUTE) or 1)
    kind = roi.GetAttribute(KIND_ATTRIBUTE) or ("slice" if clipped_stop[axis] - clipped_start[axis] == 1 else "3d")
    if kind == "slice" and clipped_stop[axis] - clipped_start[axis] != 1:
        warnings.append(f"ROI '{name}' is marked as a slice box but spans {clipped_stop[axis] - clipped_start[axis]}"
                        " slices: used as a 3D box")
        kind = "3d"
    box = Box(tuple(int(v) for v in clipped_start), tuple(int(v) for v in clipped_stop), label,  # type: ignore[arg-type]
              kind, axis if kind == "slice" else None)
    return box, warnings


def boxes_from_roi_nodes(roi_nodes: Iterable[Any], volume_node: Any, labels: dict[int, str] | None = None,
                         axis: int | None = None, empty_ok: bool = False) -> RoiConversion:
    """Boxes of all ``roi_nodes`` on ``volume_node``'s grid (see :func:`box_from_roi`).

    Raises :class:`InputError` when no ROI gives a box (the message lists why each was skipped), unless
    ``empty_ok``: then the result's ``boxset`` is None (a case with no box yet is a normal state).
    """
    boxes: list[Box] = []
    warnings: list[str] = []
    for roi in roi_nodes:
        box, notes = box_from_roi(roi, volume_node, axis)
        warnings.extend(notes)
        if box is not None:
            boxes.append(box)
    if not boxes and empty_ok:
        return RoiConversion(None, warnings)
    if not boxes:
        raise InputError("no usable box: " + ("; ".join(warnings) if warnings else "place at least one ROI"))
    shape = volume_shape(volume_node)
    validate_boxes(boxes, shape)
    names = dict(labels or {})
    for box in boxes:
        names.setdefault(box.label, "object" if box.label == 1 else f"label {box.label}")
    return RoiConversion(BoxSet(boxes, shape, names, grid_geometry(volume_node)).validate(), warnings)


def roi_nodes_from_boxes(boxset: BoxSet | Sequence[Box], volume_node: Any, name: str = "box",
                         color: Sequence[float] | None = None, scene: Any = None,
                         attributes: dict[str, str] | None = None) -> list[Any]:
    """Add one ROI node per box, aligned with the volume's voxel grid, enclosing the box's voxels.

    The nodes carry the box's kind and label as attributes, so :func:`boxes_from_roi_nodes` gives the
    same boxes back, plus ``attributes``; all of them are set before the node enters the scene, so an
    observer of the scene's node-added event sees them. ``color`` is the ROI's RGB in [0, 1].
    """
    slicer = _slicer()
    scene = scene or slicer.mrmlScene
    boxes = boxset.boxes if isinstance(boxset, BoxSet) else list(boxset)
    validate_boxes(boxes, volume_shape(volume_node))
    matrix = ijk_to_world(volume_node)
    spacing, rotation = _spacing_and_rotation(matrix)
    nodes = []
    for index, box in enumerate(boxes):
        low_ijk = np.asarray(box.start[::-1], dtype=float) - 0.5
        high_ijk = np.asarray(box.stop[::-1], dtype=float) - 0.5
        centre = matrix @ np.r_[(low_ijk + high_ijk) / 2.0, 1.0]
        to_node = np.eye(4)
        to_node[:3, :3] = rotation
        to_node[:3, 3] = centre[:3]
        roi = scene.CreateNodeByClass("vtkMRMLMarkupsROINode")
        roi.UnRegister(None)  # CreateNodeByClass hands over a reference; Python holds its own
        roi.SetName(scene.GenerateUniqueName(f"{name}_{index + 1}"))
        roi.SetAndObserveObjectToNodeMatrix(slicer.util.vtkMatrixFromArray(to_node))
        roi.SetSize(*((high_ijk - low_ijk) * spacing))
        for key, value in {KIND_ATTRIBUTE: box.kind, LABEL_ATTRIBUTE: str(int(box.label)), **(attributes or {})}.items():
            roi.SetAttribute(key, value)
        scene.AddNode(roi)
        roi.CreateDefaultDisplayNodes()
        if color is not None:
            roi.GetDisplayNode().SetSelectedColor(*color[:3])
        nodes.append(roi)
    return nodes


# --- segmentations -----------------------------------------------------------------------------------

def _segmentations_logic() -> Any:
    return _slicer().vtkSlicerSegmentationsModuleLogic


def segmentation_from_labelmap(labelmap: np.ndarray, reference_node: Any, labels: dict[int, dict],
                               segmentation_node: Any = None, name: str = "segmentation", scene: Any = None) -> Any:
    """Fill a segmentation node from a label array on ``reference_node``'s grid.

    Args:
        labelmap: integer labels, shape ``(z, y, x)`` of the reference volume; 0 is background.
        reference_node: the volume the labels were computed on (its geometry is used and referenced).
        labels: ``{value: {"name": str, "color": [r, g, b]}}``; one segment per entry, in this order,
            present even when empty. Values found in ``labelmap`` but not named here raise.
        segmentation_node: node to replace the segments of; a new one is added when None.

    Returns the segmentation node.
    """
    slicer = _slicer()
    scene = scene or slicer.mrmlScene
    labelmap = np.asarray(labelmap)
    if labelmap.shape != volume_shape(reference_node):
        raise InputError(f"label array of shape {labelmap.shape} does not fit '{reference_node.GetName()}' "
                         f"of shape {volume_shape(reference_node)}")
    unknown = sorted(set(np.unique(labelmap).tolist()) - set(labels) - {0})
    if unknown:
        raise InputError(f"label values {unknown} have no name in {sorted(labels)}")
    if segmentation_node is None:
        segmentation_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", scene.GenerateUniqueName(name))
    segmentation_node.CreateDefaultDisplayNodes()
    segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(reference_node)
    segmentation = segmentation_node.GetSegmentation()
    segmentation.RemoveAllSegments()
    geometry = volume_from_node_geometry(reference_node)
    present = [v for v in labels if (labelmap == v).any()]
    # one import of every label at once: a colour table names each value's segment by the value itself
    colors = scene.AddNewNodeByClass("vtkMRMLColorTableNode", "__weakseg_colors__")
    colors.SetTypeToUser()
    colors.SetNumberOfColors(max([0, *labels]) + 1)
    for value in present:
        colors.SetColor(int(value), str(value), 0.5, 0.5, 0.5, 1.0)
    temporary = add_volume_node(Volume(labelmap.astype(np.int32), geometry.spacing, geometry.origin,
                                       geometry.direction), "__weakseg_labels__", labelmap=True, scene=scene)
    temporary.GetDisplayNode().SetAndObserveColorNodeID(colors.GetID())
    try:
        if present and not _segmentations_logic().ImportLabelmapToSegmentationNode(temporary, segmentation_node):
            raise InputError(f"could not import the labels into '{segmentation_node.GetName()}'")
        imported = {segmentation.GetNthSegment(i).GetName(): segmentation.GetNthSegmentID(i)
                    for i in range(segmentation.GetNumberOfSegments())}
        for index, (value, info) in enumerate(labels.items()):
            name, color = str(info.get("name", f"label {value}")), list(info.get("color", (0.5, 0.5, 0.5)))[:3]
            segment_id = imported.get(str(value))
            if segment_id is None:
                segment_id = segmentation.AddEmptySegment("", name, color)
            segment = segmentation.GetSegment(segment_id)
            segment.SetName(name)
            segment.SetColor(*color)
            segmentation.SetSegmentIndex(segment_id, index)
    finally:
        scene.RemoveNode(temporary)
        scene.RemoveNode(colors)
    return segmentation_node


def load_segmentation(path: str | os.PathLike, reference_node: Any, name: str = "segmentation",
                      scene: Any = None) -> Any:
    """A segmentation node read from a segmentation file (``.seg.nrrd``) by Slicer's segmentation storage
    node, its geometry referencing ``reference_node``'s."""
    slicer = _slicer()
    scene = scene or slicer.mrmlScene
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", scene.GenerateUniqueName(name))
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    if not storage.ReadData(node):
        scene.RemoveNode(node)
        scene.RemoveNode(storage)
        raise InputError(f"{path}: not a segmentation file Slicer can read")
    node.SetAndObserveStorageNodeID(storage.GetID())
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(reference_node)
    return node


def _string_array(values: Sequence[str]) -> Any:
    import vtk  # noqa: PLC0415

    array = vtk.vtkStringArray()
    for value in values:
        array.InsertNextValue(value)
    return array


def labelmap_from_segmentation(segmentation_node: Any, reference_node: Any,
                               segment_ids: Sequence[str] | None = None) -> tuple[np.ndarray, dict[int, dict]]:
    """Segments as one label array on ``reference_node``'s grid, shape ``(z, y, x)``.

    Segment ``n`` of ``segment_ids`` (default: all, in order) gets value ``n + 1``; where segments
    overlap the later one wins. Returns the array and ``{value: {"name", "color"}}``.
    """
    slicer = _slicer()
    segmentation = segmentation_node.GetSegmentation()
    ids = list(segment_ids) if segment_ids is not None else [segmentation.GetNthSegmentID(i)
                                                             for i in range(segmentation.GetNumberOfSegments())]
    if not ids:
        raise InputError(f"segmentation '{segmentation_node.GetName()}' has no segments")
    scene = segmentation_node.GetScene()
    temporary = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__weakseg_export__")
    try:
        if not _segmentations_logic().ExportSegmentsToLabelmapNode(segmentation_node, _string_array(ids), temporary,
                                                                   reference_node):
            raise InputError(f"could not export '{segmentation_node.GetName()}' onto '{reference_node.GetName()}'")
        array = np.array(slicer.util.arrayFromVolume(temporary), copy=True)
    finally:
        scene.RemoveNode(temporary)
    labels = {i + 1: {"name": segmentation.GetSegment(s).GetName(), "color": list(segmentation.GetSegment(s).GetColor())}
              for i, s in enumerate(ids)}
    return array, labels


# --- training curves ---------------------------------------------------------------------------------

class TrainingCurves:
    """Epoch events shown as a table node (one row an epoch) and a plot chart of the loss and a metric.

    ``curves.add(event)`` takes the worker's events as they come; non-epoch events are ignored.
    Columns: ``epoch``, ``loss`` and ``metric`` (``"dice"`` for segmentation training,
    ``"val_accuracy"`` for the box tightener; NaN in epochs whose event has none). Curves of the same
    ``name`` reuse the nodes of the previous run (emptied), so repeated runs do not pile up nodes.
    """

    def __init__(self, name: str = "WeakSeg training", metric: str = "dice", scene: Any = None) -> None:
        import vtk  # noqa: PLC0415

        self.scene = scene or _slicer().mrmlScene
        self.columns = ("epoch", "loss", metric)
        self.table = self._node("vtkMRMLTableNode", name, name)
        self.table.RemoveAllColumns()  # a new run starts an empty table
        for column in self.columns:
            array = vtk.vtkDoubleArray()
            array.SetName(column)
            self.table.AddColumn(array)
        self.chart = self._node("vtkMRMLPlotChartNode", name, name)
        self.chart.SetTitle(name)
        self.chart.SetXAxisTitle("epoch")
        self.chart.SetYAxisTitle(f"loss / {metric}")
        self.chart.RemoveAllPlotSeriesNodeIDs()
        self.series = {}
        for column, color in zip(self.columns[1:], ((0.85, 0.33, 0.1), (0.0, 0.45, 0.74))):
            series = self._node("vtkMRMLPlotSeriesNode", f"{name} {column}", column)
            series.SetAndObserveTableNodeID(self.table.GetID())
            series.SetXColumnName("epoch")
            series.SetYColumnName(column)
            series.SetPlotType(series.PlotTypeScatter)
            series.SetColor(*color)
            self.chart.AddAndObservePlotSeriesNodeID(series.GetID())
            self.series[column] = series

    def _node(self, cls: str, key: str, name: str) -> Any:
        """The scene's node of class ``cls`` made for ``key`` by an earlier run (so every run of a kind
        shows in the same table and chart), else a new one."""
        for node in self.scene.GetNodesByClass(cls):
            if node.GetAttribute(CURVES_ATTRIBUTE) == key:
                return node
        node = self.scene.AddNewNodeByClass(cls, self.scene.GenerateUniqueName(name))
        node.SetAttribute(CURVES_ATTRIBUTE, key)
        return node

    def add(self, event: dict) -> bool:
        """Append an ``{"event": "epoch", ...}`` event as a row; return whether it was one."""
        if event.get("event") != events.EPOCH:
            return False
        table = self.table.GetTable()
        row = self.table.AddEmptyRow()
        for column, key in enumerate(self.columns):
            value = event.get(key)
            table.GetColumn(column).SetValue(row, float("nan") if value is None else float(value))
        table.Modified()
        return True

    def rows(self) -> np.ndarray:
        """The table as an array of shape (epochs, 3): epoch, loss, metric."""
        table = self.table.GetTable()
        return np.array([[table.GetColumn(c).GetValue(r) for c in range(len(self.columns))]
                         for r in range(table.GetNumberOfRows())], dtype=float).reshape(-1, len(self.columns))
