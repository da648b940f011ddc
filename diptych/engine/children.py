"""Start engine processes that a terminal's Ctrl+C does not reach.

Ctrl+C in a terminal sends SIGINT to the whole foreground process group: the gateway, the
flow worker and vLLM's engine core alike. The gateway answers it with a graceful drain
(server/shutdown.py), which needs its engines alive until the requests in flight are done;
vLLM's engine core, though, installs a SIGINT handler that aborts everything and exits.

A blocked signal stays blocked across ``fork`` and ``execve``, and Python's ``signal.signal``
changes what a signal does, not whether it is blocked. So a process started by a thread that
blocks SIGINT never receives SIGINT at all, whatever handler it installs, whether it is
forked (vLLM's engine core on CPU) or spawned (the flow worker), and so are its own
children. The engines still stop on SIGTERM and on the gateway's orderly shutdown.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def sigint_blocked() -> Iterator[None]:
    """Block SIGINT in the calling thread only; processes started meanwhile inherit the block.

    Use it in a thread other than the one that handles signals (asyncio.to_thread): the
    gateway's main thread keeps receiving SIGINT.
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
