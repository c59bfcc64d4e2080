"""The project's own error type: bad input from the user.  The CLI prints it
as one line and exits 2; anything else reaching the top is a bug."""


class UsageError(Exception):
    """A bad argument, config, trace or results file: the message names the
    file, line or key and what was expected."""
