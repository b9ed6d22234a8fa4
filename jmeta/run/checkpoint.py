"""Checkpoints with orbax: periodic and final, the last few kept, written atomically.

Orbax (>= 0.12.3, local file systems) writes checkpoint ``N`` into a temporary
folder ``N.orbax-checkpoint-tmp-<time>``, writes ``commit_success.txt`` into
it once every file is on disk, and then renames it to ``N``. A write
interrupted midway (the process killed, the disk full) therefore leaves only
a temporary folder, which is never listed as a step.

Orbax itself lists *any* folder named by a number as a step, even one without
``commit_success.txt`` (e.g. a half-copied run folder); restoring it fails
deep inside orbax. :class:`Checkpointer` is stricter: a step counts only if
its folder holds ``commit_success.txt``, so :meth:`Checkpointer.latest_step`
and ``restore(None, ...)`` fall back to the last complete checkpoint, and a
later :meth:`Checkpointer.save` of that step replaces the incomplete folder
(and removes stale temporary folders). :class:`Checkpointer` restores into a
template of the same structure, so a checkpoint from another config fails
with a clear error.

Orbax before 0.12.3 does not write ``commit_success.txt`` on a local disk,
so none of its checkpoints could be told complete: :class:`Checkpointer`
refuses such a version with a :class:`CheckpointError` that says which one
to install, instead of saving checkpoints it would never find again.

Checksums. Orbax's marker says a checkpoint was written completely, not that
it is still intact: a flipped bit in a data file loads silently as garbage,
and a truncated file ends in a long TensorStore error. After orbax has
committed checkpoint ``N``, :meth:`Checkpointer.save` therefore writes
``N/jmeta_checksums.json`` (atomically): the size and sha256 of every file of
the step, the shape of every array, what the caller passes as ``extra`` (the
runner's logging window), and a sha256 of all that. Before a checkpoint is
used, every file is checked against it, and the arrays' shapes against the
template (the config). ``restore(None, ...)`` takes the newest checkpoint that
passes; each newer one that fails is named with its cause, in one
:class:`CheckpointWarning` line (``checkpoint 12 in DIR is truncated (...);
using checkpoint 8 instead``). None left: a one-line :class:`CheckpointError`.
A checkpoint without a checksum file (written by an older jmeta, or killed
between orbax's commit and the checksum file) is used, unverified and with a
warning, only when no checkpoint passes its check.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
import json
import logging
import pathlib
import re
import shutil
import sys
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any

#: The file orbax writes into a checkpoint folder once it is complete.
COMMIT_MARKER = "commit_success.txt"
#: Part of the name of the temporary folder orbax writes into.
TMP_MARKER = ".orbax-checkpoint-tmp"
#: The oldest orbax-checkpoint that writes :data:`COMMIT_MARKER` on a local file system.
MIN_ORBAX_VERSION = (0, 12, 3)
#: jmeta's checksum file in each checkpoint folder, written after orbax's commit.
CHECKSUMS = "jmeta_checksums.json"
CHECKSUMS_FORMAT = "jmeta-checkpoint-checksums/1"


def uncommitted(tree):
    """``tree`` with its arrays as uncommitted device arrays, as a freshly initialised state holds them.

    Orbax restores arrays committed to a device; ``jit`` compiles such arguments apart from the uncommitted
    ones of a fresh state (measured: a restored nav2d MAML-TRPO state compiled its meta-step again, 17 s on
    the 2-core CPU; a resumed sinusoid run compiled it twice more), so every resume, evaluation and export of
    a restored state goes through this (``jmeta.run.runner``, ``jmeta.run.experiment.load_run``).
    """
    def fresh(x):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(jnp.asarray(np.asarray(jax.random.key_data(x))),
                                            impl=jax.random.key_impl(x))
        return jnp.asarray(np.asarray(x))

    return jax.tree.map(fresh, tree)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be restored (missing, corrupted, or of another structure)."""


class CheckpointWarning(UserWarning):
    """A checkpoint was skipped (it failed its check) or used unverified; the run's host state was repaired."""


@dataclasses.dataclass(frozen=True)
class Restored:
    """What :meth:`Checkpointer.load` restored.

    Attributes:
      step: the checkpoint's step.
      tree: the restored pytree.
      extra: what :meth:`Checkpointer.save` stored as ``extra`` (``None``: the
        checkpoint has no checksum file).
      skipped: ``(step, cause)`` of each newer checkpoint that failed its check.
    """

    step: int
    tree: Any
    extra: dict | None
    skipped: tuple = ()


def _version_tuple(version: str) -> tuple[int, ...] | None:
    """``"0.12.3"`` -> ``(0, 12, 3)`` (also ``"0.12.3rc1"``, ``"1.0"``); ``None`` if it does not start with ``N.N``."""
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", str(version))
    return tuple(int(g) for g in m.groups() if g is not None) if m else None


def check_orbax_version(version: str | None) -> None:
    """Raises :class:`CheckpointError` if ``version`` of orbax-checkpoint is older than :data:`MIN_ORBAX_VERSION`.

    An unparseable or unknown version passes (a development build).
    """
    parsed = _version_tuple(version) if version is not None else None
    if parsed is not None and parsed < MIN_ORBAX_VERSION:
        need = ".".join(map(str, MIN_ORBAX_VERSION))
        raise CheckpointError(
            f"orbax-checkpoint {version} is too old for jmeta's checkpoints: it needs >= {need} (older versions "
            f"do not write {COMMIT_MARKER} on a local disk, so a complete checkpoint could not be told from an "
            f"interrupted one); run: pip install -U 'orbax-checkpoint>={need}'")


class Checkpointer:
    """Saves and restores a pytree (a :class:`~jmeta.train.TrainState`) by step, with checksums.

    Args:
      directory: the checkpoint folder (created if missing).
      keep: how many checkpoints to keep (oldest deleted first).
    """

    def __init__(self, directory, *, keep: int = 3):
        import orbax.checkpoint as ocp

        check_orbax_version(getattr(ocp, "__version__", None))
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self._ocp = ocp
        self.directory = pathlib.Path(directory).absolute()
        self.directory.mkdir(parents=True, exist_ok=True)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False)
        with _quiet_orbax_logs():
            self._manager = ocp.CheckpointManager(self.directory, options=options)

    def is_complete(self, step: int) -> bool:
        """Whether checkpoint ``step``'s folder exists and holds orbax's commit marker."""
        return (self.directory / str(int(step)) / COMMIT_MARKER).is_file()

    def all_steps(self) -> list[int]:
        """The steps of the complete checkpoints (intact or not), oldest first."""
        with _quiet_orbax_logs():
            self._manager.reload()
            return sorted(s for s in self._manager.all_steps() if self.is_complete(s))

    def _candidates(self) -> list[int]:
        """Complete checkpoints and folders that once were (a checksum file but no commit marker), newest first."""
        steps = set(self.all_steps())
        for p in self.directory.iterdir():
            if p.name.isdigit() and (p / CHECKSUMS).is_file():
                steps.add(int(p.name))
        return sorted(steps, reverse=True)

    def latest_step(self) -> int | None:
        """The newest checkpoint that passes its checksum (the one ``restore(None, ...)`` starts from), or None."""
        return self._scan(None)[0]

    def check(self, step: int, template: PyTree | None = None) -> str | None:
        """Why checkpoint ``step`` cannot be used (a few words), ``"unverified"`` if it has no checksum file, or
        None if every file matches its checksum (and, given ``template``, every array's shape)."""
        return _verify(self.directory / str(int(step)), int(step), template)[0]

    def save(self, step: int, tree: PyTree, *, extra: dict | None = None) -> None:
        """Writes ``tree`` as checkpoint ``step`` (atomically), waits until it is on disk, then writes its
        checksum file (with ``extra``, a JSON-able dict given back by :meth:`load`)."""
        step = int(step)
        self._remove_incomplete(step)
        try:
            with _quiet_orbax_logs():
                self._manager.save(step, args=self._ocp.args.StandardSave(_encode(tree)), force=True)
                self._manager.wait_until_finished()
            _write_checksums(self.directory / str(step), step, _array_specs(tree), extra)
        except Exception as e:  # a full disk / read-only folder: an OSError naming the checkpoint, not orbax's text
            from jmeta._io import output_error

            err = output_error(e, self.directory / str(step))
            if err is None:
                raise
            with contextlib.suppress(OSError):
                self._remove_incomplete(step)  # give back the space the partial write took
            raise err from e

    def set_extra(self, step: int, extra: dict) -> None:
        """Replaces the ``extra`` stored in checkpoint ``step``'s checksum file (which must be intact)."""
        d = self.directory / str(int(step))
        why, sums = _verify(d, int(step), None)
        if why is not None:
            raise CheckpointError(f"checkpoint {step} in {self.directory} {_cause(why)}; its extra was not updated")
        _write_checksums(d, int(step), sums["arrays"], extra, files=sums["files"])

    def restore(self, step: int | None, template: PyTree) -> PyTree:
        """Restores checkpoint ``step`` (default: the newest intact one) into ``template``'s structure."""
        return self.load(step, template).tree

    def load(self, step: int | None, template: PyTree) -> Restored:
        """Restores checkpoint ``step`` into ``template``'s structure after checking it.

        ``step=None``: the newest checkpoint that passes its check; newer ones
        that fail are named in one :class:`CheckpointWarning`, as is a
        checkpoint used without a checksum file.

        Raises:
          CheckpointError: ``step`` does not exist or fails its check (naming
            the intact steps), or no checkpoint is intact (naming each and why).
        """
        if step is not None:
            return self._load_step(int(step), template)
        chosen, why, skipped = self._scan(template)
        while chosen is not None:
            try:
                got = self._load_step(chosen, template, checked=why)
            except CheckpointError as e:
                skipped.append((chosen, getattr(e, "cause", str(e))))
                chosen, why, more = self._scan(template, below=chosen)
                skipped += more
                continue
            self._warn_fallback(skipped, chosen, why)
            return dataclasses.replace(got, skipped=tuple(skipped))
        if not skipped:
            raise CheckpointError(f"no checkpoint found in {self.directory}")
        raise CheckpointError(f"no intact checkpoint in {self.directory}: {_listing(skipped)}")

    def unusable(self) -> str | None:
        """When checkpoints exist but none passes its check: why, in one line (else None)."""
        chosen, _, skipped = self._scan(None)
        if chosen is not None or not skipped:
            return None
        return f"no intact checkpoint in {self.directory}: {_listing(skipped)}"

    def close(self) -> None:
        with _quiet_orbax_logs():
            self._manager.close()

    def _scan(self, template, below: int | None = None):
        """``(step, why, skipped)``: the newest usable checkpoint (``why`` None: verified, ``"unverified"``:
        no checksum file, used only when none verifies) and the newer ones that fail, ``[(step, cause)]``."""
        skipped, unverified = [], []
        for s in self._candidates():
            if below is not None and s >= below:
                continue
            why = self.check(s, template)
            if why is None:
                return s, None, sorted(skipped + [(u, _cause("unverified")) for u in unverified], reverse=True)
            if why == "unverified":
                unverified.append(s)
            else:
                skipped.append((s, _cause(why)))
        if unverified:  # none verifies: the newest without a checksum file, naming the failed newer ones
            return unverified[0], "unverified", [(s, c) for s, c in skipped if s > unverified[0]]
        return None, None, skipped

    def _load_step(self, step: int, template, checked: str | None | bool = False) -> Restored:
        d = self.directory / str(step)
        if checked is False:  # an explicit step: it must exist and pass
            if not d.is_dir() or not (self.is_complete(step) or (d / CHECKSUMS).is_file()):
                have = self.all_steps()
                raise CheckpointError(f"no checkpoint {step} in {self.directory}; available: "
                                      f"{', '.join(map(str, have)) if have else 'none'}")
            checked = self.check(step, template)
            if checked not in (None, "unverified"):
                intact = [s for s in self.all_steps() if s != step and self.check(s, template) is None]
                raise CheckpointError(f"checkpoint {step} in {self.directory} {_cause(checked)}; intact: "
                                      f"{', '.join(map(str, intact)) if intact else 'none'}")
            if checked == "unverified":
                self._warn_fallback([], step, checked)
        _quiet_closed_loop_noise()  # before: a failed read's stray callbacks can fire before the except below
        try:
            with _quiet_orbax_logs():
                restored = self._manager.restore(step, args=self._ocp.args.StandardRestore(_encode(template)))
        except Exception as e:  # orbax raises several types: name the cause in one short line
            first = " ".join(str(e).split())[:160]
            cause = f"could not be read by orbax ({type(e).__name__}: {first})"
            err = CheckpointError(f"cannot restore checkpoint {step} from {self.directory}: {cause}")
            err.cause = cause
            raise err from None
        extra = None
        if checked is None:
            extra = json.loads((d / CHECKSUMS).read_text(encoding="utf-8")).get("extra")
        return Restored(step, _decode(restored, template), extra)

    def _warn_fallback(self, skipped, chosen: int, why: str | None) -> None:
        if not skipped and why is None:
            return
        if len(skipped) == 1:
            head = f"checkpoint {skipped[0][0]} in {self.directory} {skipped[0][1]}; "
        elif skipped:
            head = f"checkpoints {_listing(skipped)} in {self.directory} failed their check; "
        else:
            head = ""
        tail = f"using checkpoint {chosen} instead" if skipped else f"using checkpoint {chosen} in {self.directory}"
        if why == "unverified":
            tail += (" (it has no checksum file: written by an older jmeta or interrupted before it; "
                     "loaded unverified)")
        warnings.warn(head + tail, CheckpointWarning, stacklevel=4)

    def _remove_incomplete(self, step: int) -> None:
        """Deletes leftovers of interrupted writes: temporary folders, and ``step``'s folder if incomplete or
        damaged (it is about to be written again)."""
        removed = False
        for p in self.directory.iterdir():
            if p.is_dir() and TMP_MARKER in p.name:
                shutil.rmtree(p, ignore_errors=True)
                removed = True
        target = self.directory / str(step)
        if target.exists() and (not self.is_complete(step) or self.check(step) is not None):
            shutil.rmtree(target, ignore_errors=True)
            removed = True
        if removed:
            with _quiet_orbax_logs():
                self._manager.reload()


def _listing(skipped) -> str:
    """``[(12, c), (8, c), (4, d)]`` -> ``"12, 8 (c); 4 (d)"``."""
    groups: list[tuple[list, str]] = []
    for s, c in skipped:
        if groups and groups[-1][1] == c:
            groups[-1][0].append(s)
        else:
            groups.append(([s], c))
    return "; ".join(f"{', '.join(map(str, ss))} ({c})" for ss, c in groups)


_CAUSES = {"unverified": "has no checksum file (written by an older jmeta, or interrupted before it was written)"}


def _cause(why: str) -> str:
    return _CAUSES.get(why, why)


def _sha256(path: pathlib.Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _self_digest(doc: dict) -> str:
    body = {k: v for k, v in doc.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _array_specs(tree) -> dict:
    return {jax.tree_util.keystr(p): list(getattr(x, "shape", ()))
            for p, x in jax.tree_util.tree_flatten_with_path(_encode(tree))[0]}


def _write_checksums(d: pathlib.Path, step: int, arrays: dict, extra: dict | None, *, files=None) -> None:
    """Writes ``d/CHECKSUMS`` atomically: each file's size and sha256, the arrays' shapes, ``extra``."""
    from jmeta._io import atomic_write_text

    if files is None:
        files = {}
        for p in sorted(d.rglob("*")):
            rel = p.relative_to(d).as_posix()
            ours = rel == CHECKSUMS or (p.name.startswith(f".{CHECKSUMS}.") and p.name.endswith(".tmp"))
            if p.is_file() and not ours:
                files[rel] = {"size": p.stat().st_size, "sha256": _sha256(p)}
    doc = {"format": CHECKSUMS_FORMAT, "step": step, "files": files, "arrays": arrays, "extra": extra}
    doc["sha256"] = _self_digest(doc)
    atomic_write_text(d / CHECKSUMS, json.dumps(doc, indent=1, allow_nan=False) + "\n")


def _verify(d: pathlib.Path, step: int, template) -> tuple[str | None, dict | None]:
    """``(why, checksums)``: why checkpoint folder ``d`` is not intact (a few words; ``"unverified"``: no
    checksum file), or ``(None, checksums)``."""
    path = d / CHECKSUMS
    if not path.is_file():
        return "unverified", None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        ok = (isinstance(doc, dict) and doc.get("format") == CHECKSUMS_FORMAT and isinstance(doc.get("files"), dict)
              and isinstance(doc.get("arrays"), dict) and doc.get("sha256") == _self_digest(doc))
    except (OSError, ValueError):
        ok = False
    if not ok:
        return f"has a damaged checksum file ({CHECKSUMS} unreadable or failing its own checksum)", None
    if doc.get("step") != step:
        return f"has the checksum file of checkpoint {doc.get('step')}", None
    for rel, want in doc["files"].items():
        p = d / rel
        if not p.is_file():
            return f"is missing a file ({rel})", None
        size = p.stat().st_size
        if size != want.get("size"):
            return f"is truncated or changed ({rel} holds {size} of {want.get('size')} bytes)", None
        if _sha256(p) != want.get("sha256"):
            return f"is corrupted ({rel} fails its checksum)", None
    if template is not None:
        mismatch = _shape_mismatch(doc["arrays"], _array_specs(template))
        if mismatch:
            return f"does not match the config ({mismatch})", None
    return None, doc


def _shape_mismatch(saved: dict, want: dict) -> str | None:
    missing, extra = [k for k in want if k not in saved], [k for k in saved if k not in want]
    if missing or extra:
        parts = ([f"it lacks {len(missing)} array(s) of the config, e.g. {missing[0]}"] if missing else []) + \
                ([f"it holds {len(extra)} array(s) the config has not, e.g. {extra[0]}"] if extra else [])
        return ", ".join(parts)
    for k, shape in want.items():
        if list(saved[k]) != list(shape):
            return f"{k} is {tuple(saved[k])} there, {tuple(shape)} here"
    return None


_ORBAX_NOISE = ("Failed to read Metadata file", "Failed to json parse Metadata file", "Metadata file does not exist")


class _DropOrbaxMetadataNoise(logging.Filter):
    def filter(self, record):
        return not any(m in record.getMessage() for m in _ORBAX_NOISE)


@contextlib.contextmanager
def _quiet_orbax_logs():
    """Drops orbax's log lines about an unreadable ``_CHECKPOINT_METADATA`` (jmeta's check names it)."""
    logger, f = logging.getLogger("absl"), _DropOrbaxMetadataNoise()
    logger.addFilter(f)
    try:
        yield
    finally:
        logger.removeFilter(f)


_previous_unraisablehook = None


def _quiet_closed_loop_noise() -> None:
    """Silences ``RuntimeError: Event loop is closed`` reported as unraisable.

    When orbax's restore fails on one array, it closes its asyncio loop while
    TensorStore still reads the others; their completion callbacks later call
    ``loop.call_soon_threadsafe`` on the closed loop from TensorStore's threads,
    and Python prints each failure (dozens of tracebacks, at random moments up
    to interpreter exit). Installed once, before the first restore; any other
    unraisable exception goes to the previous hook.
    """
    global _previous_unraisablehook
    if _previous_unraisablehook is not None:
        return
    _previous_unraisablehook = sys.unraisablehook

    def hook(u):
        if (isinstance(u.exc_value, RuntimeError) and str(u.exc_value) == "Event loop is closed"
                and (u.object is None or inspect.iscoroutine(u.object))):
            return
        _previous_unraisablehook(u)

    sys.unraisablehook = hook


def _is_key(x) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _encode(tree):
    """Typed PRNG keys are stored as their raw data."""
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _decode(tree, template):
    return jax.tree.map(lambda x, t: jax.random.wrap_key_data(x) if _is_key(t) else x, tree, template)
