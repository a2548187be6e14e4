"""Exceptions that WeakSeg raises for problems a user can fix.

Every message names the file, box or setting at fault, so that a GUI or the command line can show
it as it is.
"""


class WeakSegError(Exception):
    """Base class of all errors a user can act on."""


class InputError(WeakSegError, ValueError):
    """Bad input data: an image, a box, a mask or a geometry mismatch."""


class ModelError(WeakSegError):
    """A model folder, model card or checkpoint is missing, corrupt or incompatible."""


class CancelledError(WeakSegError):
    """A job was cancelled by the user (SIGTERM to the worker, or ``cancel()`` on a handle)."""


class OutputError(WeakSegError):
    """A file cannot be written (disk full, no permission, a folder in its place) or an output folder is
    in use by another run; nothing was changed."""
