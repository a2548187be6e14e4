"""``python -m WeakSegLib`` is the ``weakseg`` command line."""

import sys

from WeakSegLib.cli import main

sys.exit(main())
