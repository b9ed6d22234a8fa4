"""SIGINT (Ctrl-C) and SIGTERM (``kill``, a batch scheduler's stop) while a run trains.

Both are handled alike. During meta-training the first signal only asks the
run to stop: the training loop finishes the compiled call in flight (at most
``train.log_every`` meta-steps), writes a checkpoint at the step it reached and
raises :class:`Interrupted`, whose message names the step and the exact
command that resumes the run; the resumed run continues bit-identically. A
second signal, or one outside the training loop (building, compiling, the
final evaluation), raises :class:`Interrupted` at once with what holds at that
moment (the last checkpoint). ``jmeta`` prints the message as one line and
exits with status ``128 + signal`` (130 for SIGINT, 143 for SIGTERM).

Handlers are installed only in the main thread (Python delivers signals
there) and only for signals that are not ignored (a background job's
SIGINT stays ignored); elsewhere :class:`StopSignals` does nothing and
signals keep their usual effect.
"""

from __future__ import annotations

import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The run stopped on SIGINT or SIGTERM; the message says what was saved and how to resume.

    Attributes:
      signum: the signal's number.
      step: the meta-step of the last checkpoint (None if there is none).
    """

    def __init__(self, message: str, signum: int, step: int | None = None):
        super().__init__(message)
        self.signum, self.step = int(signum), step

    def __str__(self) -> str:
        return str(self.args[0])


class StopSignals:
    """A ``with`` block in which SIGINT and SIGTERM either request a stop or raise :class:`Interrupted`.

    ``deferring``: while true, the first signal only sets ``requested`` (the
    signal's number) and the code polls it at a safe point; otherwise, and
    for any further signal, the handler raises :class:`Interrupted` with
    ``message`` (a string, or a function returning one, called then;
    ``{signal}`` is replaced by the signal's name).
    """

    def __init__(self, message="interrupted ({signal})"):
        self.message = message
        self.deferring = False
        self.requested: int | None = None
        self._old: dict = {}

    def _handle(self, signum, frame):
        if self.deferring and self.requested is None:
            self.requested = signum
            return
        message = self.message() if callable(self.message) else self.message
        raise Interrupted(message.replace("{signal}", signal.Signals(signum).name), signum)

    def interrupted(self, message: str, step: int | None = None) -> Interrupted:
        """The :class:`Interrupted` for the requested stop, with ``message`` (``{signal}`` filled in)."""
        signum = self.requested if self.requested is not None else signal.SIGINT
        return Interrupted(message.replace("{signal}", signal.Signals(signum).name), signum, step)

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                if signal.getsignal(s) is not signal.SIG_IGN:  # e.g. SIGINT of a background job stays ignored
                    self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old if old is not None else signal.SIG_DFL)
        self._old = {}


__all__ = ["Interrupted", "StopSignals"]
