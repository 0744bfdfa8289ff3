"""User-facing errors.

Every problem the user can fix (a bad path, a corrupt image, a wrong parameter) is
raised as a :class:`LabError` whose message names the file or parameter and says what
to do. The CLI prints the message and exits with status 2; only ``--debug`` shows a
traceback. Anything else that escapes is a bug in the lab.

Example:
    >>> raise LabError("data_dir 'x' does not exist", fix="pass --data-dir PATH")
    Traceback (most recent call last):
    ...
    anomaly_utils.errors.LabError: data_dir 'x' does not exist. Fix: pass --data-dir PATH
"""

from __future__ import annotations


class LabError(Exception):
    """A problem with the user's input, described so the user can fix it.

    Args:
        message: what is wrong, naming the file or parameter.
        fix: what the user should do about it (optional, appended as "Fix: ...").
    """

    def __init__(self, message: str, fix: str | None = None):
        self.message = message
        self.fix = fix
        super().__init__(f"{message}. Fix: {fix}" if fix else message)


class DataError(LabError):
    """A dataset folder or file is missing, unreadable or inconsistent."""


class ParameterError(LabError):
    """A parameter has the wrong type or is out of range."""


class ArtifactError(LabError):
    """A run directory's artifact is missing, corrupt, unsafe or from another run."""
