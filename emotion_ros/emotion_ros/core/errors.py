"""Errors of the pure-Python core."""


class InputError(ValueError):
    """Input data the core cannot use (wrong encoding, truncated, NaN, ...).

    The message names the problem; nodes log it (rate-limited) and carry on.
    """


class DataError(ValueError):
    """A training or evaluation data set the command cannot use (missing or empty folder, no recognisable
    labels, a single label, ...).  The command-line tools print the message on one line and exit with 2."""
