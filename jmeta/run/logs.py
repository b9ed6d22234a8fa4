"""Host-side logging, off the hot path: JSON-lines metrics and a progress bar.

Metrics leave the device only at logging steps. :class:`MetricsLog` appends
one JSON object per logging step to ``metrics.jsonl`` (flushed and fsynced,
so a killed run loses at most the record being written) and, on resume,
drops records past the restored checkpoint so the file has exactly one
record per logging step. Extra sinks (TensorBoard, Weights & Biases) receive
the same records.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import sys
import time
from typing import Any, Iterable

from jmeta._io import atomic_write_text, naming


def _jsonable(v):
    if isinstance(v, int) and not isinstance(v, bool):
        return v  # counts (skipped_updates) stay integers
    try:
        f = float(v)
    except (TypeError, ValueError):
        return v
    if math.isnan(f) or math.isinf(f):
        return str(f)
    if float(f).is_integer() and not isinstance(v, float) and getattr(v, "dtype", None) is not None \
            and str(v.dtype).startswith(("int", "uint")):
        return int(f)
    return f


class MetricsLog:
    """Appends ``{"step": s, ...}`` records to a JSON-lines file.

    Args:
      path: the ``metrics.jsonl`` file.
      sinks: further loggers with ``write(step, record)`` and ``close()``.
    """

    def __init__(self, path, sinks: Iterable[Any] = ()):
        self.path = pathlib.Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.sinks = list(sinks)
        self._f = open(self.path, "a", encoding="utf-8")

    def write(self, step: int, metrics: dict) -> dict:
        record = {"step": int(step), **{k: _jsonable(v) for k, v in metrics.items()}}
        with naming(self.path):  # a full disk names this file
            self._f.write(json.dumps(record) + "\n")
            self._f.flush()
            os.fsync(self._f.fileno())
        for s in self.sinks:
            s.write(int(step), record)
        return record

    def close(self) -> None:
        try:
            with naming(self.path):
                self._f.close()
        finally:
            for s in self.sinks:
                s.close()

    @staticmethod
    def truncate_after(path, step: int) -> int:
        """Keeps only records with ``step <= step`` (and drops a torn last line); returns how many remain."""
        path = pathlib.Path(path)
        if not path.exists():
            return 0
        keep = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by a kill
            if rec.get("step", -1) <= step:
                keep.append(line)
        atomic_write_text(path, "".join(x + "\n" for x in keep))
        return len(keep)

    @staticmethod
    def read(path) -> list[dict]:
        return [json.loads(x) for x in pathlib.Path(path).read_text(encoding="utf-8").splitlines() if x.strip()]


def _strict(obj):
    """``obj`` with every NaN/inf float replaced by ``None``: standard JSON (jq, JavaScript) has no NaN."""
    if isinstance(obj, dict):
        return {k: _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def atomic_write_json(path, obj) -> None:
    """Writes ``obj`` as standard JSON, atomically; NaN and inf become ``null`` (``eval.json`` counts the
    diverged tasks behind such a mean in ``nonfinite``)."""
    atomic_write_text(path, json.dumps(_strict(obj), indent=2, allow_nan=False) + "\n")


class Progress:
    """A dependency-free progress bar with rate and ETA.

    On a terminal it redraws one line; otherwise (CI, files) it prints a line
    at most every ``min_interval`` seconds.
    """

    def __init__(self, total: int, *, start: int = 0, desc: str = "", stream=None, enabled: bool = True,
                 min_interval: float = 0.2, unit: str = "step"):
        self.total, self.n, self.desc, self.unit = total, start, desc, unit
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.min_interval = min_interval if self.tty else max(min_interval, 10.0)
        self._t0 = time.perf_counter()
        self._n0 = start
        self._last = 0.0
        self.postfix = ""

    def update(self, n: int, postfix: str = "", force: bool = False) -> None:
        self.n = n
        if postfix:
            self.postfix = postfix
        now = time.perf_counter()
        if self.enabled and (force or now - self._last >= self.min_interval):
            self._last = now
            self._draw(now)

    def _draw(self, now) -> None:
        done = self.n - self._n0
        el = now - self._t0
        rate = done / el if el > 0 else 0.0
        eta = (self.total - self.n) / rate if rate > 0 else float("inf")
        frac = self.n / self.total if self.total else 1.0
        width = 24
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        line = (f"{self.desc} [{bar}] {self.n}/{self.total} {rate:,.1f} {self.unit}/s "
                f"ETA {_fmt_time(eta)} {self.postfix}")
        if self.tty:
            self.stream.write("\r" + line[:200].ljust(80))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self._draw(time.perf_counter())
            if self.tty:
                self.stream.write("\n")
            self.stream.flush()


def _fmt_time(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(s)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m:02d}:{sec:02d}"
