"""``python -m WeakSegLib`` is the ``weakseg`` command line."""

import sys

from WeakSegLib.app.cli import main

if __name__ == "__main__":  # DeepCut's CRF worker processes re-import the main module
    sys.exit(main())
