"""Errors of the pure-Python core."""


class InputError(ValueError):
    """Input data the core cannot use (wrong encoding, truncated, NaN, ...).

    The message names the problem; nodes log it (rate-limited) and carry on.
    """
