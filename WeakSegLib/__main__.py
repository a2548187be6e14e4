"""``python -m WeakSegLib`` is the ``weakseg`` command line."""

from WeakSegLib.app.cli import main
from WeakSegLib.app.jobs import exit_process

if __name__ == "__main__":  # DeepCut's CRF worker processes re-import the main module
    exit_process(main())
