"""The one host training loop: logging windows, progress, sinks, checkpoints, the NaN policy and stop requests.

``jmeta train`` (:func:`jmeta.run.runner.train`), the vectorised sweep
(:func:`jmeta.run.search.run_vectorized`) and learned-optimizer meta-training
(:func:`jmeta.learned_optim.meta_train`) all drive :class:`TrainLoop` with
their own step functions. The loop knows nothing of run folders, configs or
file formats: sinks, checkpoints, stop requests and the progress bar come in
as plain objects and callables.

What one :meth:`TrainLoop.run` does, from ``start`` to ``total``::

    while step < total:
        n = steps to the next logging step, checkpoint step or total (one call: Python stays off the hot path)
        state, metrics, bad, skipped = advance(state, step, n)   # metrics: means over those n steps
        window.add(metrics, n)                                   # float64 sums on the host
        bad >= 0 (on_nan="stop"): raise NonFiniteError(nonfinite_message(bad))  # before any later checkpoint
        at a logging step or at final: one record (the window's mean) to every sink; progress.update
        at a checkpoint step before total: checkpoint(step, state, window)
        should_stop(): break (the step reached is checkpointed below)
    checkpoint(step, state, window) unless that step has one already

A record is the mean of every meta-step since the previous record (however
checkpoints split the window: a :class:`Window` is saved with each checkpoint
and given back to the loop on resume), plus ``steps_averaged`` when a resume
lost part of the window, ``skipped_updates`` with ``on_nan="skip"`` and the
seconds since :meth:`TrainLoop.run` began (``time``; the first record's
includes compiling the step function).

Example (a toy step function)::

    def advance(state, step, n):
        return state + n, {"loss": 1.0 / (step + n)}, None, None

    log = []
    loop = TrainLoop(advance, total=10, log_every=5, sinks=[ListSink(log)])
    state = loop.run(0)   # log: two records, at steps 5 and 10
"""

from __future__ import annotations

import functools
import math
import time
from typing import Any, Callable, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jmeta import validate

PyTree = Any

__all__ = ["ListSink", "NonFiniteError", "Sink", "TrainLoop", "Window", "guarded_steps"]

#: Values of ``on_nan``: stop at the first non-finite step, skip such updates, or None (the step function
#: reports none; e.g. a vectorised sweep, whose configurations diverge one by one).
ON_NAN = ("stop", "skip", None)


class NonFiniteError(RuntimeError):
    """The loss or meta-gradient became NaN or Inf (``on_nan='stop'``).

    Attributes:
      step: the meta-step whose objective or gradient norm was not finite (its update was not applied).
    """

    def __init__(self, message: str, step: int | None = None):
        super().__init__(message)
        self.step = step


class Sink(Protocol):
    """Receives each logging record: ``write(step, record)``; the caller closes it."""

    def write(self, step: int, record: dict) -> Any: ...


class ListSink:
    """A sink that appends ``{"step": step, **record}`` to a list (tests, notebooks)."""

    def __init__(self, records: list | None = None):
        self.records = [] if records is None else records

    def write(self, step: int, record: dict) -> None:
        self.records.append({"step": int(step), **record})


class Window:
    """The host carry between compiled calls: the metric sums of the current logging window and the count
    of skipped updates.

    A record averages every meta-step since the previous record, however
    checkpoints split the window, so the window is saved beside each
    checkpoint (:meth:`to_dict`) and restored on resume (:meth:`from_dict`).
    Sums are float64 on the host; a window of one call gives back that call's
    means unchanged. Metrics may be scalars or arrays (one value per
    configuration of a vectorised sweep); :meth:`to_dict` needs scalars.
    """

    def __init__(self, sums: dict | None = None, steps: int = 0, skipped: int = 0):
        self.sums, self.steps, self.skipped = dict(sums or {}), int(steps), int(skipped)
        self._single: dict | None = None  # the means of the window's only call, if it has one

    def add(self, means: dict, n: int) -> None:
        """Adds ``n`` meta-steps whose metrics average to ``means``."""
        self._single = dict(means) if self.steps == 0 and not self.sums else None
        for k, v in means.items():
            v = float(v) if np.ndim(v) == 0 else np.asarray(v, np.float64)
            self.sums[k] = self.sums.get(k, 0.0) + v * n
        self.steps += n

    def pop_mean(self) -> dict:
        """The window's mean of every metric; the window starts over (the skipped count stays)."""
        if self._single is not None:  # one call: its means exactly (x * n / n need not round back to x)
            rec = {k: float(v) if np.ndim(v) == 0 else np.asarray(v, np.float64) for k, v in self._single.items()}
        else:
            rec = {k: v / self.steps for k, v in self.sums.items()}
        self.sums, self.steps, self._single = {}, 0, None
        return rec

    def to_dict(self) -> dict:
        """JSON-ready: non-finite sums as ``"inf"`` / ``"-inf"`` / ``"nan"`` (standard JSON has none of them;
        null would read back as NaN and turn an inf window mean into nan after a resume)."""
        sums = {k: v if math.isfinite(v) else str(v) for k, v in self.sums.items()}
        return {"window_sums": sums, "window_steps": self.steps, "skipped_updates": self.skipped}

    @classmethod
    def from_dict(cls, entry: dict) -> "Window":
        """The window :meth:`to_dict` wrote (``null`` sums, from older files, read as NaN)."""
        sums = {k: float("nan") if v is None else float(v) for k, v in entry["window_sums"].items()}
        return cls(sums, entry["window_steps"], entry["skipped_updates"])


def guarded_steps(step_fn: Callable, on_nan: str, check: Sequence[str] = ("objective", "grad_norm")):
    """``n`` meta-steps in one compiled call, guarded against non-finite values (the device side of the
    NaN policy).

    Args:
      step_fn: ``step_fn(state, key, data) -> (state, metrics)`` with
        ``metrics["objective"]`` and ``metrics["grad_norm"]`` and an integer
        ``state.step`` (a :class:`~jmeta.train.TrainState`), not jitted.
      on_nan: ``"stop"``: from the first step whose objective or gradient norm
        is not finite on, updates are not applied (the host stops at the end of
        the call, naming that step). ``"skip"``: that update is dropped, the
        step counter moves on, and ``skipped`` counts them.
      check: the metrics whose finiteness decides (a meta-RL step without a meta-gradient norm checks its
        ``update_norm``).

    Returns:
      ``run(state, bad, skipped, key, data, n) -> (state, bad, skipped,
      metrics)`` (jitted; ``n`` is an argument of the compiled program, so
      every chunk length runs one program; ``metrics`` averaged over the ``n``
      steps). ``bad``: the first step whose values were not finite (-1 while
      none). Running many steps per call keeps Python dispatch off the hot path.
    """
    on_nan = validate.choice("on_nan", on_nan, ("stop", "skip"))
    check = tuple(check)

    def one(carry, _):
        state, bad, skipped, key, data = carry
        new, metrics = step_fn(state, key, data)
        ok = functools.reduce(jnp.logical_and, [jnp.isfinite(metrics[k]) for k in check])
        if on_nan == "stop":
            take = ok & (bad < 0)
            bad = jnp.where((bad < 0) & ~ok, state.step, bad)
            new = jax.tree.map(lambda a, b: jnp.where(take, a, b), new, state)
        else:
            kept = jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, state)
            new = kept._replace(step=state.step + 1)
            skipped = skipped + (~ok).astype(jnp.int32)
        return (new, bad, skipped, key, data), metrics

    step = jax.jit(one)  # traced once: the metrics' shapes below and the loop body share the trace

    def run(state, bad, skipped, key, data, n):
        carry = (state, bad, skipped, key, data)
        # n is a traced trip count: one compiled program for every chunk length (a checkpoint or a resume
        # inside a logging window asks for other lengths; a static n compiled the whole meta-step for each).
        zeros = jax.tree.map(lambda m: jnp.zeros(m.shape, jnp.promote_types(m.dtype, jnp.float32)),
                             jax.eval_shape(lambda c: step(c, None)[1], carry))

        def body(_, c):
            carry, sums = c
            carry, metrics = step(carry, None)
            return carry, jax.tree.map(lambda s, m: s + m.astype(s.dtype), sums, metrics)

        (state, bad, skipped, _, _), sums = jax.lax.fori_loop(0, n, body, (carry, zeros))
        return state, bad, skipped, jax.tree.map(lambda s: s / jnp.asarray(n, s.dtype), sums)

    donate = () if jax.default_backend() == "cpu" else (0,)
    return jax.jit(run, donate_argnums=donate)


def _loss_postfix(record: dict) -> str:
    loss = record.get("loss", float("nan"))
    return f"loss {loss:.4f}" if np.ndim(loss) == 0 else f"best loss {float(np.nanmin(loss)):.4f}"


class TrainLoop:
    """The host loop around a step function.

    Args:
      advance: ``advance(state, step, n) -> (state, metrics, bad, skipped)``:
        ``n`` meta-steps from host step ``step``. ``metrics``: a dict of their
        means (device or host arrays; fetched once per call). ``bad``: the
        first non-finite step (< 0 or None: none), read with ``on_nan="stop"``.
        ``skipped``: the count of skipped updates so far, read with
        ``on_nan="skip"``.
      total: run up to this step (a ``stop_after`` below the run's length).
      final: the run's last step (default ``total``): a record is always
        written there, even when the window is short of ``log_every``.
      log_every: a record every this many steps (0: only at ``final``).
      checkpoint_every: a checkpoint every this many steps (0: only at the
        end); ignored without ``checkpoint``.
      sinks: objects with ``write(step, record)`` (:class:`Sink`), written in
        order; the caller closes them.
      checkpoint: ``checkpoint(step, state, window)``, or None for none. Called
        at each ``checkpoint_every`` step before ``total`` and once at the end
        (the step reached, unless it was checkpointed already; step 0 too).
      update_window: ``update_window(step, window)``: a resumed run whose
        ``start == final`` with a partial window writes that window's record
        and hands the emptied window to the existing checkpoint ``step``.
      should_stop: polled after each call; true: checkpoint the step reached
        and return (:attr:`stopped` is then true).
      progress: an object with ``update(step, postfix=...)`` (a progress bar),
        updated at each record; the caller closes it.
      postfix: ``postfix(record) -> str`` for the progress bar (default: the
        loss, or the best loss over configurations).
      on_nan: ``"stop"``: raise :class:`NonFiniteError` when ``advance``
        reports a bad step (before any later record or checkpoint).
        ``"skip"``: records hold ``skipped_updates``. None: neither.
      nonfinite_message: ``nonfinite_message(bad_step) -> str``, the error's
        message (default: names the step).
      time_key: the record's key for the seconds since :meth:`run` began
        (rounded to ms), or None for none.

    Attributes:
      step: the step reached (read it from a signal handler for a message).
      last_checkpoint: the step of the last checkpoint this loop wrote or
        resumed from.
      stopped: whether ``should_stop`` ended the loop early.
    """

    def __init__(self, advance: Callable, *, total: int, final: int | None = None, log_every: int,
                 checkpoint_every: int = 0, sinks: Sequence[Sink] = (), checkpoint: Callable | None = None,
                 update_window: Callable | None = None, should_stop: Callable[[], bool] | None = None,
                 progress: Any = None, postfix: Callable[[dict], str] = _loss_postfix, on_nan: str | None = None,
                 nonfinite_message: Callable[[int], str] | None = None, time_key: str | None = "time"):
        self.advance = advance
        self.total = validate.integer("total", total, min=0)
        self.final = self.total if final is None else validate.integer("final", final, min=self.total)
        self.log_every = validate.integer("log_every", log_every, min=0)
        self.checkpoint_every = validate.integer("checkpoint_every", checkpoint_every, min=0)
        validate.choice("on_nan", on_nan, ON_NAN)
        self.sinks, self.checkpoint, self.update_window = list(sinks), checkpoint, update_window
        self.should_stop, self.progress, self.postfix = should_stop, progress, postfix
        self.on_nan, self.nonfinite_message, self.time_key = on_nan, nonfinite_message, time_key
        self.step = self.last_checkpoint = 0
        self.stopped = False

    def _next(self, s: int) -> int:
        """The next step at which the host must look: a logging step, a checkpoint step or ``total``."""
        nxt = self.total
        if self.log_every:
            nxt = min(nxt, (s // self.log_every + 1) * self.log_every)
        if self.checkpoint_every and self.checkpoint is not None:
            nxt = min(nxt, (s // self.checkpoint_every + 1) * self.checkpoint_every)
        return nxt

    def _record(self, window: Window, s: int, t0: float) -> dict:
        n = window.steps
        rec = window.pop_mean()
        if n != s - self._window_start:  # part of the window was lost (a resume without its saved window)
            rec["steps_averaged"] = n
        self._window_start = s
        if self.on_nan == "skip":
            rec["skipped_updates"] = window.skipped
        if self.time_key is not None:
            rec[self.time_key] = round(time.perf_counter() - t0, 3)
        for sink in self.sinks:
            sink.write(s, rec)
        if self.progress is not None:
            self.progress.update(s, postfix=self.postfix(rec))
        return rec

    def run(self, state: PyTree, *, start: int = 0, window: Window | None = None,
            window_start: int | None = None) -> PyTree:
        """Runs from ``start`` to ``total``; returns the state reached.

        Args:
          state: the state at ``start`` (a fresh one, or a resumed checkpoint's).
          start: the step of ``state`` (a resumed run's checkpoint step; it
            counts as checkpointed).
          window: the logging window saved with that checkpoint (default: empty).
          window_start: the step of the last record before ``start`` (default
            ``start``); a window holding fewer steps than ``step -
            window_start`` is marked with ``steps_averaged``.

        Raises:
          NonFiniteError: ``on_nan="stop"`` and ``advance`` reported a bad step.
        """
        start = validate.integer("start", start, min=0, max=self.final)
        window = Window() if window is None else window
        self._window_start = start if window_start is None else validate.integer("window_start", window_start,
                                                                                 min=0, max=start)
        self.step = self.last_checkpoint = s = start
        self.stopped = False
        t0 = time.perf_counter()
        while s < self.total:
            nxt = self._next(s)
            state, metrics, bad, skipped = self.advance(state, s, nxt - s)
            metrics, bad, skipped = jax.device_get((metrics, bad, skipped))  # one host transfer per call
            window.add(metrics, nxt - s)
            self.step = s = nxt
            if self.on_nan == "stop" and bad is not None:
                b = int(bad)  # checked after every call, so no checkpoint is written past a bad step
                if b >= 0:
                    msg = (self.nonfinite_message(b) if self.nonfinite_message is not None else
                           f"non-finite loss or meta-gradient at meta-step {b}; its update was not applied")
                    raise NonFiniteError(msg, b)
            if self.on_nan == "skip" and skipped is not None:
                window.skipped = int(skipped)
            if (self.log_every and s % self.log_every == 0) or s == self.final:
                self._record(window, s, t0)
            if (self.checkpoint is not None and self.checkpoint_every and s % self.checkpoint_every == 0
                    and s < self.total):
                self.checkpoint(s, state, window)
                self.last_checkpoint = s
            if self.should_stop is not None and self.should_stop() and s < self.total:
                self.stopped = True
                break
        if s == self.final and window.steps:
            # Resumed from a checkpoint inside a logging window with final equal to its step: nothing ran,
            # but a run of that many steps logs the window here.
            self._record(window, s, t0)
            if s == self.last_checkpoint and s and self.update_window is not None:
                self.update_window(s, window)
        if self.checkpoint is not None and (s != self.last_checkpoint or s == 0):
            self.checkpoint(s, state, window)
            self.last_checkpoint = s
        return state
