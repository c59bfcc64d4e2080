"""How a run stops on a signal: SIGINT, SIGTERM and SIGHUP end it with exit
status 130, 143 and 129, after every exit path's cleanup has run.

The handler records the signal and raises (KeyboardInterrupt for SIGINT,
Terminated for the others); only the first signal raises, so that a second
one cannot cut the first one's cleanup short.  Python swallows an exception
raised where it calls back from C (numba's and llvmlite's callbacks,
__del__, weakref callbacks: "Exception ignored in ..."); a stop swallowed
there is raised again a moment later, from wherever the main thread then
is, and the run looks at the record at safe points (`check`), so that a
stop is never lost.  A section that must not be cut in half (a fork,
stopping the workers, writing the results) runs under `deferred()`: a
signal arriving there is taken at its end.  The run's child processes
ignore the three signals (`ignore_in_child`): their parent stops them.
"""
import contextlib
import signal
import sys

STOP = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129}
AGAIN_S = 0.01          # a swallowed stop is raised again this much later

_pending = None         # the first signal received, once one is
_again = False          # a stop was swallowed: SIGALRM raises it again
_depth = 0              # deferred() sections entered


class Terminated(BaseException):
    """SIGTERM or SIGHUP as an exception, so that cleanup runs.  Not an
    Exception, as KeyboardInterrupt is not: code that catches Exception
    (numba's compiler does, trying one typing after another) must not
    swallow it."""

    def __init__(self, signum):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _stop(signum):
    return KeyboardInterrupt() if signum == signal.SIGINT else Terminated(signum)


def _on_signal(signum, frame):
    global _pending
    if _pending is not None:
        return
    _pending = signum
    if _depth == 0:
        raise _stop(signum)


def _on_alarm(signum, frame):
    global _again
    if _again and _depth == 0:
        _again = False
        raise _stop(_pending)


def _unraisable(u):
    """A stop swallowed by Python: not printed, raised again shortly.
    Once a signal stops the run, the other errors Python cannot raise are
    left unsaid too: they come from objects the stop cut short halfway
    through their making (llvmlite's, whose __del__ then fails)."""
    global _again
    if _pending is None:
        sys.__unraisablehook__(u)
    elif isinstance(u.exc_value, (KeyboardInterrupt, Terminated)):
        _again = True
        signal.setitimer(signal.ITIMER_REAL, AGAIN_S)


def install():
    """Handle the three signals in this process (the main thread); returns
    what `restore` puts back.  SIGINT is handled even when inherited
    ignored (a shell starts background jobs so); SIGHUP inherited ignored
    (nohup) stays ignored."""
    global _pending, _again, _depth
    _pending, _again, _depth = None, False, 0
    saved = ({s: signal.getsignal(s) for s in STOP + (signal.SIGALRM,)}, sys.unraisablehook,
             signal.pthread_sigmask(signal.SIG_BLOCK, []))
    for s in STOP:
        if s != signal.SIGHUP or saved[0][s] != signal.SIG_IGN:
            signal.signal(s, _on_signal)
    signal.signal(signal.SIGALRM, _on_alarm)
    sys.unraisablehook = _unraisable
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP)
    return saved


def restore(saved):
    """Put back what `install` found; a signal still blocked and pending is
    dropped (the caller has its exit status already)."""
    global _pending, _again, _depth
    handlers, hook, mask = saved
    signal.setitimer(signal.ITIMER_REAL, 0)
    for s in STOP:
        signal.signal(s, signal.SIG_IGN)     # discards a pending one
    for s, h in handlers.items():
        signal.signal(s, h if h is not None else signal.SIG_DFL)
    sys.unraisablehook = hook
    _pending, _again, _depth = None, False, 0
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def pending():
    """The first signal received since `install`, or None."""
    return _pending


def check():
    """A safe point: raise the stop a signal asked for, if one did (its
    first raise may have been swallowed)."""
    global _again
    if _pending is not None:
        _again = False
        raise _stop(_pending)


@contextlib.contextmanager
def deferred():
    """Run the body with the three signals blocked; one that arrives
    meanwhile is taken at its end (outermost section only)."""
    global _depth
    _depth += 1
    try:
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP)
        yield
    finally:
        _depth -= 1
        if _depth == 0:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP)
    if _depth == 0:
        check()


def finish():
    """The run is over: the signal that stopped it, or one that arrived
    before this, or None.  From here on the three signals are ignored:
    the exit status is decided, and the interpreter's own exit (which
    puts back the default actions) must not be cut short.  A first signal
    can still raise on the way in; call again then (it cannot raise
    twice)."""
    global _depth
    _depth += 1
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP)
    signal.setitimer(signal.ITIMER_REAL, 0)
    waiting = signal.sigpending()
    got = _pending if _pending is not None else next((s for s in STOP if s in waiting), None)
    for s in STOP:
        signal.signal(s, signal.SIG_IGN)
    return got


def ignore_in_child():
    """In a freshly forked child of the run (forked under `deferred()`):
    ignore the three signals, whose pending ones are dropped, and unblock
    them.  The parent stops its children; PR_SET_PDEATHSIG covers a parent
    that dies."""
    for s in STOP:
        signal.signal(s, signal.SIG_IGN)
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP)
