"""Child processes that die with the process that started them, even when it is SIGKILLed.

A server the command line starts for itself (the Prefect API server, ~230 MB) must not outlive
it: killed with SIGKILL, by the out-of-memory killer or by a scheduler, a parent runs no
cleanup, and its children are re-parented to PID 1 and keep running. Linux can deliver a
signal to a process when its parent dies (``prctl(PR_SET_DEATHSIG)``); the setting survives
``execve``, so a tiny launcher sets it and then becomes the real command::

    parent (vqa) --Popen--> python lifeline.py PARENT_PID -- prefect server start ...
                              | prctl(PR_SET_DEATHSIG, SIGKILL); parent still PARENT_PID?
                              '--execv--> prefect server start ...   (same pid, same setting)

:func:`guarded` builds that command line. The launcher runs this file as a script (``python
/path/to/lifeline.py``), so it needs nothing but the standard library and works whether or
not the project is installed. The signal follows the death of the parent *thread* that
started the child: start guarded children from the main thread (``subprocess.Popen`` does so
when called there). Elsewhere than Linux the command runs unguarded.

Dask's local worker processes need none of this: they watch their parent and exit within a
second of its death (measured: ``tests/test_cli.py``).
"""

from __future__ import annotations

import os
import signal
import sys

PR_SET_DEATHSIG = 1  # <linux/prctl.h>
DEATH_SIGNAL = signal.SIGKILL  # the parent is gone: there is nobody left to shut down cleanly for


def guarded(command: list[str]) -> list[str]:
    """``command`` (an argument list) wrapped so that its process dies with this one.

    Start the result from the main thread (see the module docstring). On systems without
    ``prctl`` the command is returned unchanged.
    """
    if not sys.platform.startswith("linux"):
        return list(command)
    return [sys.executable, os.path.abspath(__file__), str(os.getpid()), "--", *command]


def set_parent_death_signal(parent_pid: int, sig: int = DEATH_SIGNAL) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent dies; exit at once when
    ``parent_pid`` is already gone (it died before the request). Returns whether the request
    was accepted (``False`` off Linux or without libc's ``prctl``)."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        accepted = libc.prctl(PR_SET_DEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False
    if accepted and os.getppid() != parent_pid:
        os._exit(1)
    return accepted


def _main(argv: list[str]) -> None:
    """``lifeline.py PARENT_PID -- COMMAND...``: set the parent-death signal, then exec COMMAND."""
    if len(argv) < 3 or argv[1] != "--":
        sys.exit("usage: lifeline.py PARENT_PID -- COMMAND [ARGS...]")
    set_parent_death_signal(int(argv[0]))
    command = argv[2:]
    os.execvp(command[0], command)


if __name__ == "__main__":
    _main(sys.argv[1:])
