"""User-facing errors.

Every error a user can cause with bad input (a corrupt file, an unknown name, an impossible
budget, a missing QPU token) is raised as a :class:`QubocompressError` subclass whose message is
one line that says what is wrong and how to fix it. The CLI prints that line and exits non-zero;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class QubocompressError(Exception):
    """Base class of every error caused by the user's input or environment."""

    exit_code = 2


class DataError(QubocompressError):
    """A data set is missing, corrupt or of the wrong shape."""


class ModelError(QubocompressError):
    """A model name, checkpoint or architecture cannot be used."""


class ProblemError(QubocompressError):
    """A formulation or budget cannot be built or reached (e.g. an unreachable target ratio)."""


class SolverError(QubocompressError):
    """A solver is unknown, not installed, misconfigured or unreachable."""


class ArtifactError(QubocompressError):
    """A compressed artifact or output path is corrupt or unusable."""


class ClusterError(QubocompressError):
    """Ray is not installed, a cluster cannot be reached, or its workers cannot run our tasks."""
