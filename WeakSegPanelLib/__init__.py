"""What the WeakSeg Train and Infer panels share inside Slicer: installing the worker's packages on first
use, the interpreter of the background worker, the parameter-node binding of a panel, following a job
from a Qt timer, and the self-tests' tiny model.

This package is Slicer's side of the extension (it may import ``slicer``, and ``qt`` inside functions);
everything a user sees that can be tested without Slicer's Qt application lives in ``WeakSegLib`` or the
modules' Logic classes. CMake installs it beside the scripted modules.
"""

#: where the extension's documentation lives (the extension's homepage in CMakeLists.txt)
DOCUMENTATION_URL = "https://github.com/weakseg/SlicerWeakSeg#readme"
#: the oldest Slicer these modules run in: 5.10 ships Python 3.12; 5.8 ships 3.9, older than the 3.10
#: the package requires
MINIMUM_SLICER = (5, 10)
