"""The case list of the Train panel in a scene: one case loaded at a time, its boxes saved as the user
works (:class:`~WeakSegLib.io.worklist.Worklist` says where).

:class:`CaseSession` loads a case's image (and its reference mask, as a label volume) into the scene,
shows the boxes of its box file as ROI nodes tagged with the volume, and makes the image the active
volume of the scene's selection node. Moving to another case saves the boxes first and removes the
previous case's nodes. While a case is loaded, adding or removing one of its boxes, the end of a
handle drag on one, and the scene's closing each save its boxes (atomically).

The review loop (:mod:`WeakSegLib.io.review`): :meth:`CaseSession.show_prediction` shows the loaded
case's ranked prediction as a segmentation node, ready for the Segment Editor, and
:meth:`CaseSession.reviewed_labels` turns that node, as the user left it, back into a label volume on
the case's grid with the prediction's label values.
"""

from __future__ import annotations

import contextlib
import json
import weakref
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from WeakSegLib.errors import InputError
from WeakSegLib.io.boxes import check_boxes_fit
from WeakSegLib.io.volume import Volume, check_same_grid, read_label_volume, read_volume
from WeakSegLib.io.worklist import Worklist
from WeakSegLib.mrml.nodes import (
    _slicer,
    add_volume_node,
    boxes_from_roi_nodes,
    grid_geometry,
    labelmap_from_segmentation,
    roi_nodes_from_boxes,
    segmentation_from_labelmap,
    volume_from_node_geometry,
    volume_shape,
)

#: attribute naming the volume node an ROI node is a box of (its node ID)
VOLUME_ATTRIBUTE = "WeakSeg.Volume"
#: attribute of a review segmentation node: its segments' names → label values (JSON)
LABEL_VALUES_ATTRIBUTE = "WeakSeg.LabelValues"
#: the selection node every Slicer scene holds (its active volume is what the slice views show)
SELECTION_NODE = "vtkMRMLSelectionNodeSingleton"


def box_nodes(volume: Any, attribute: str = VOLUME_ATTRIBUTE) -> list[Any]:
    """The ROI nodes of ``volume``'s scene whose ``attribute`` names ``volume`` (its boxes); none for a
    volume no longer in a scene (MRML detaches a node from its scene before it tells the scene's
    observers that the node was removed: vtkMRMLScene::RemoveNode)."""
    scene = volume.GetScene()
    if scene is None:
        return []
    return [n for n in scene.GetNodesByClass("vtkMRMLMarkupsROINode") if n.GetAttribute(attribute) == volume.GetID()]


class CaseSession:
    """A worklist and the case of it that is in ``scene`` (module docstring).

    ``volume_attribute`` names the attribute that ties a box ROI to its volume;
    ``on_saved(index, path)`` is told after every save.
    """

    def __init__(self, worklist: Worklist, scene: Any, volume_attribute: str = VOLUME_ATTRIBUTE,
                 on_saved: Callable[[int, Path], None] | None = None) -> None:
        self.worklist, self.scene, self.attribute = worklist, scene, volume_attribute
        self.on_saved = on_saved
        self.current: int | None = None
        self.volume: Any = None
        self.reference: Any = None
        self.prediction: Any = None  # the loaded case's prediction under review (a segmentation node)
        self._quiet = 0
        self._roi_tags: dict[str, tuple[Any, int]] = {}
        import vtk  # noqa: PLC0415 - with slicer, only where MRML is

        session = weakref.ref(self)  # the scene's observers must not keep the session alive

        @vtk.calldata_type(vtk.VTK_OBJECT)
        def added(caller: Any, event: Any, node: Any) -> None:
            if session() is not None:
                session()._node_added(node)

        @vtk.calldata_type(vtk.VTK_OBJECT)
        def removed(caller: Any, event: Any, node: Any) -> None:
            if session() is not None:
                session()._node_removed(node)

        def closing(caller: Any, event: Any) -> None:
            if session() is not None:
                session().save()

        def closed(caller: Any, event: Any) -> None:  # the case's nodes are gone with the scene's
            if session() is not None:
                session()._forget()

        self._tags = [scene.AddObserver(scene.NodeAddedEvent, added),
                      scene.AddObserver(scene.NodeRemovedEvent, removed),
                      scene.AddObserver(scene.StartCloseEvent, closing),
                      scene.AddObserver(scene.EndCloseEvent, closed)]

    # ---- boxes ---------------------------------------------------------------------------------------
    def box_nodes(self) -> list[Any]:
        """The ROI nodes of the loaded case."""
        return [] if self.volume is None else box_nodes(self.volume, self.attribute)

    def save(self) -> Path | None:
        """Write the loaded case's boxes to its box file (nothing when no case is loaded); a case left with
        no box loses its box file and is no longer trained on (:meth:`Worklist.clear_boxes`)."""
        if self.current is None or self.volume is None or self._quiet:
            return None
        boxset = boxes_from_roi_nodes(self.box_nodes(), self.volume, empty_ok=True).boxset
        if boxset is None:
            path = self.worklist.clear_boxes(self.current)
        else:
            path = self.worklist.save_boxes(self.current, boxset)
        if self.on_saved is not None:
            self.on_saved(self.current, path)
        return path

    @contextlib.contextmanager
    def quiet(self) -> Iterator[None]:
        """No saving inside (while the session itself adds or removes the case's nodes)."""
        self._quiet += 1
        try:
            yield
        finally:
            self._quiet -= 1

    def _is_box(self, node: Any) -> bool:
        return (node is not None and node.IsA("vtkMRMLMarkupsROINode") and self.volume is not None
                and node.GetAttribute(self.attribute) == self.volume.GetID())

    def _forget(self) -> None:
        for roi, tag in self._roi_tags.values():
            roi.RemoveObserver(tag)
        self._roi_tags = {}
        self.current, self.volume, self.reference, self.prediction = None, None, None, None

    def _node_added(self, node: Any) -> None:
        if self._is_box(node):
            session = weakref.ref(self)

            def moved(caller: Any, event: Any) -> None:
                if session() is not None:
                    session().save()

            tag = node.AddObserver(_slicer().vtkMRMLMarkupsNode.PointEndInteractionEvent, moved)
            self._roi_tags[node.GetID()] = (node, tag)
            self.save()

    def _node_removed(self, node: Any) -> None:
        if node is not None and node.GetID() in self._roi_tags:
            roi, tag = self._roi_tags.pop(node.GetID())
            roi.RemoveObserver(tag)
            self.save()

    # ---- cases ---------------------------------------------------------------------------------------
    def load(self, index: int) -> Any:
        """Make case ``index`` the loaded one (the previous one's boxes saved, its nodes removed);
        returns its volume node."""
        if not 0 <= index < len(self.worklist.cases):
            raise InputError(f"no case {index + 1}: the list has {len(self.worklist.cases)}")
        self.save()
        self.unload()
        case = self.worklist.cases[index]
        with self.quiet():
            volume = add_volume_node(read_volume(case.image), case.name, scene=self.scene)
            reference = None
            if "mask" in case.files:
                reference = add_volume_node(read_label_volume(case.files["mask"]), f"{case.name} reference",
                                            labelmap=True, scene=self.scene)
            self.current, self.volume, self.reference = index, volume, reference
            boxes = self.worklist.boxes(index)
            if boxes is not None and boxes.boxes:
                check_boxes_fit(boxes, grid_geometry(volume), case.name)
                roi_nodes_from_boxes(boxes, volume, name=f"{case.name} box", scene=self.scene,
                                     attributes={self.attribute: volume.GetID()})
        selection = self.scene.GetNodeByID(SELECTION_NODE)
        if selection is not None:
            selection.SetActiveVolumeID(volume.GetID())
            selection.SetActiveLabelVolumeID(reference.GetID() if reference is not None else None)
        return volume

    def unload(self) -> None:
        """Remove the loaded case's nodes from the scene (its boxes are not saved: call :meth:`save`)."""
        with self.quiet():
            for node in self.box_nodes():
                self.scene.RemoveNode(node)
            for node in (self.prediction, self.reference, self.volume):
                if node is not None and self.scene.IsNodePresent(node):
                    self.scene.RemoveNode(node)
        self.current, self.volume, self.reference, self.prediction = None, None, None, None

    # ---- review ----------------------------------------------------------------------------------------
    def show_prediction(self) -> Any:
        """The loaded case's ranked prediction as a segmentation node on its image (one segment per label
        value, named after the case's box labels, else ``label <value>``); replaces one shown before.

        Raises:
            InputError: no case loaded, the case has no prediction, or it is not on the image's grid.
        """
        if self.current is None or self.volume is None:
            raise InputError("load a case first")
        case = self.worklist.cases[self.current]
        if case.review is None or case.review.prediction is None:
            raise InputError(f"case {case.name!r} has no prediction to review: rank the cases first")
        labels = read_label_volume(case.review.prediction)
        check_same_grid(self._grid(), labels, case.name, f"prediction {case.review.prediction}")
        boxes = self.worklist.boxes(self.current)
        names = boxes.labels if boxes is not None else {}
        values = sorted(int(v) for v in set(labels.array.ravel().tolist()) - {0})
        table = {v: {"name": names.get(v, f"label {v}")} for v in values}
        if self.prediction is not None and self.scene.IsNodePresent(self.prediction):
            self.scene.RemoveNode(self.prediction)
        node = segmentation_from_labelmap(labels.array, self.volume, table, name=f"{case.name} prediction",
                                          scene=self.scene)
        node.SetAttribute(LABEL_VALUES_ATTRIBUTE, json.dumps({info["name"]: v for v, info in table.items()}))
        self.prediction = node
        return node

    def reviewed_labels(self, segmentation_node: Any = None) -> Volume:
        """The segmentation under review (default: the one :meth:`show_prediction` made), as the user left
        it, as a label volume on the loaded case's grid: a segment keeps the label value of the prediction's
        segment of its name; a segment the user added gets the next free value."""
        node = segmentation_node if segmentation_node is not None else self.prediction
        if node is None or self.volume is None:
            raise InputError("no prediction is being reviewed: load the case to review first")
        values = json.loads(node.GetAttribute(LABEL_VALUES_ATTRIBUTE) or "{}")
        segmentation = node.GetSegmentation()
        ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
        array, table = labelmap_from_segmentation(node, self.volume, ids) if ids else (None, {})
        grid = self._grid()
        out = np.zeros(grid.shape, np.uint16)
        free = max([0, *values.values()]) + 1
        for index, info in table.items():
            value = values.get(info["name"])
            if value is None:
                value, free = free, free + 1
            out[array == index] = value
        return grid.with_array(out.astype(np.uint8 if out.max() <= 255 else np.uint16))

    def _grid(self) -> Volume:
        """The loaded case's grid (a volume of zeros without a voxel copy)."""
        geometry = volume_from_node_geometry(self.volume)
        return Volume(np.broadcast_to(np.zeros((), np.uint8), volume_shape(self.volume)), geometry.spacing,
                      geometry.origin, geometry.direction)

    def close(self) -> None:
        """Save, stop watching the scene (the nodes stay)."""
        self.save()
        for tag in self._tags:
            self.scene.RemoveObserver(tag)
        self._tags = []
        for roi, tag in self._roi_tags.values():
            roi.RemoveObserver(tag)
        self._roi_tags = {}

    def __del__(self) -> None:
        for tag in getattr(self, "_tags", []):
            self.scene.RemoveObserver(tag)
