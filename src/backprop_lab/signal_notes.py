"""SIGINT and SIGTERM noted, not acted on: the run decides when to stop (:mod:`backprop_lab.interrupts`).

This module imports neither torch nor Lightning: the command line holds notes from its first line on in
DDP's other ranks, before anything heavy is imported.
"""

from __future__ import annotations

import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class SignalNotes:
    """While entered (a context manager): SIGINT and SIGTERM are noted in :attr:`signum` (the first one
    wins), not acted on, so the run decides when to stop; the handlers that were there come back at exit.

    :func:`backprop_lab.train.train` holds one from start to end, so that a signal at any phase (start-up,
    training, the final checkpoint, the pictures, the summary) ends the run with its record complete.
    Lightning installs no SIGTERM handler of its own over one that is there. Outside the main thread
    Python allows no handler: nothing is installed there."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _note(self, signum: int, frame) -> None:
        self.signum = self.signum or signum

    def __enter__(self) -> SignalNotes:
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._note)
                outer = getattr(self._previous[signum], "__self__", None)
                if isinstance(outer, SignalNotes):  # notes held around these (a DDP rank's command): theirs too
                    self.signum = self.signum or outer.signum
        return self

    def take_over(self) -> None:
        """Point both signals at these notes again, over a handler installed meanwhile (Lightning's, which
        in DDP broadcasts rank 0's SIGTERM at every batch and would race the ranks' own agreement)."""
        if self._previous and threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                signal.signal(signum, self._note)

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            if signal.getsignal(signum) == self._note:  # unless someone has put back their own meanwhile
                signal.signal(signum, handler)
        self._previous.clear()
