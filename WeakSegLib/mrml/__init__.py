"""MRML bridge: the only part of WeakSegLib that imports :mod:`slicer`.

It uses MRML and module-logic classes only (never Qt, never ``slicer.modules``), so it runs inside
Slicer and, for the tests, against the ``slicer-core`` wheel. Nothing here imports torch.

- :mod:`.nodes`: volume nodes ↔ :class:`~WeakSegLib.io.volume.Volume`, ROI nodes ↔ boxes, label arrays ↔
  segmentation nodes, training events → table and plot nodes.
- :mod:`.tasks`: background jobs (tightener training, tightening, training, prediction, of one volume or
  a dataset) started from nodes, with their results put back into nodes; what the modules' Logic
  classes call.
- :mod:`.cases`: the Train panel's case list in a scene (one case loaded, its boxes saved as the user
  works).
"""

from WeakSegLib.mrml.cases import VOLUME_ATTRIBUTE, box_nodes
from WeakSegLib.mrml.nodes import (
                                   KIND_ATTRIBUTE,
                                   LABEL_ATTRIBUTE,
                                   RoiConversion,
                                   TrainingCurves,
                                   add_volume_node,
                                   box_from_roi,
                                   boxes_from_roi_nodes,
                                   grid_geometry,
                                   ijk_to_world,
                                   labelmap_from_segmentation,
                                   load_segmentation,
                                   roi_nodes_from_boxes,
                                   segmentation_from_labelmap,
                                   slice_axis,
                                   update_node_from_volume,
                                   volume_from_node,
                                   volume_from_node_geometry,
                                   volume_shape,
                                   world_to_index,
)

__all__ = ["VOLUME_ATTRIBUTE", "box_nodes", "KIND_ATTRIBUTE", "LABEL_ATTRIBUTE", "RoiConversion", "TrainingCurves", "add_volume_node", "box_from_roi",
           "boxes_from_roi_nodes", "grid_geometry", "ijk_to_world", "labelmap_from_segmentation", "load_segmentation", "roi_nodes_from_boxes",
           "segmentation_from_labelmap", "slice_axis", "update_node_from_volume", "volume_from_node",
           "volume_from_node_geometry", "volume_shape", "world_to_index"]
