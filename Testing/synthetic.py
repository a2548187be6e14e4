"""Small synthetic volumes shared by the test suites (import as ``from synthetic import ...``)."""

from __future__ import annotations

import numpy as np

from WeakSegLib.io.volume import Volume


def oblique_volume(array: np.ndarray) -> Volume:
    """A volume with non-identity spacing, origin and an oblique direction."""
    c, s = np.cos(0.3), np.sin(0.3)
    direction = (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0)
    return Volume(array, (0.7, 0.9, 2.5), (-12.5, 30.25, 7.0), direction)
