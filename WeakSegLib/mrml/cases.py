"""The case list of the Train panel in a scene: one case loaded at a time, its boxes saved as the user
works (:class:`~WeakSegLib.io.worklist.Worklist` says where).

:class:`CaseSession` loads a case's image (and its reference mask, as a label volume) into the scene,
shows the boxes of its box file as ROI nodes tagged with the volume, and makes the image the active
volume of the scene's selection node. Moving to another case saves the boxes first and removes the
previous case's nodes. While a case is loaded, adding or removing one of its boxes, the end of a
handle drag on one, and the scene's closing each save its boxes (atomically).
"""

from __future__ import annotations

import contextlib
import weakref
from pathlib import Path
from typing import Any, Callable, Iterator

from WeakSegLib.errors import InputError
from WeakSegLib.io.boxes import check_boxes_fit
from WeakSegLib.io.volume import read_label_volume, read_volume
from WeakSegLib.io.worklist import Worklist
from WeakSegLib.mrml.nodes import _slicer, add_volume_node, boxes_from_roi_nodes, grid_geometry, roi_nodes_from_boxes

#: attribute naming the volume node an ROI node is a box of (its node ID)
VOLUME_ATTRIBUTE = "WeakSeg.Volume"
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
        self.current, self.volume, self.reference = None, None, None

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
            for node in (self.reference, self.volume):
                if node is not None and self.scene.IsNodePresent(node):
                    self.scene.RemoveNode(node)
        self.current, self.volume, self.reference = None, None, None

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
