"""Limits on user input that every layer shares, checked before any work starts."""

from __future__ import annotations

from qubocompress.errors import ProblemError

# Seeds run from 0 to 2^31 - 1: dwave-samplers' limit, and within torch's and numpy's.
MAX_SEED = 2**31


def check_seed(seed: object, flag: str = "--seed") -> int:
    """``seed`` as an int in 0..MAX_SEED-1, else a one-line ProblemError naming ``flag``."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < MAX_SEED:
        raise ProblemError(f"{flag} must be a whole number from 0 to {MAX_SEED - 1:,}, got {seed!r}")
    return seed
