"""WeakSegLib: Slicer-free core of WeakSeg.

Trains medical image segmentation networks from bounding boxes (tightness prior, emptiness and
box-size constraints through log-barrier extensions), predicts whole volumes and evaluates them.
Nothing here imports Slicer or Qt except :mod:`WeakSegLib.mrml`.
"""

__version__ = "0.1.0"
