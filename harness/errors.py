"""The project's own error type: bad input from the user.  The CLI prints it
as one line and exits 2; anything else reaching the top is a bug.  And the
one way a user's file is read: bounded, so that a device or an endless pipe
given as a config, trace or results file is an error, not a hang."""
import os
import stat


class UsageError(Exception):
    """A bad argument, config, trace or results file: the message names the
    file, line or key and what was expected."""


def read_input(path, limit, what):
    """The bytes of the user's file `path`, at most `limit` of them, or a
    UsageError saying why not.  `what` names the kind of file."""
    try:
        mode = os.stat(path).st_mode
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            # /dev/zero would never end
            raise UsageError("%s: not a %s: a device" % (path, what))
        with open(path, "rb") as f:
            data = f.read(limit + 1)          # a pipe has no size to check first
    except OSError as e:
        raise UsageError("%s: cannot read: %s" % (path, e.strerror or e)) from None
    if len(data) > limit:
        raise UsageError("%s: not a %s: over the %d MiB one can hold"
                         % (path, what, limit >> 20))
    return data
