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
"""

from __future__ import annotations

import contextlib
import pathlib
import re
import shutil
from typing import Any

import jax

PyTree = Any

#: The file orbax writes into a checkpoint folder once it is complete.
COMMIT_MARKER = "commit_success.txt"
#: Part of the name of the temporary folder orbax writes into.
TMP_MARKER = ".orbax-checkpoint-tmp"
#: The oldest orbax-checkpoint that writes :data:`COMMIT_MARKER` on a local file system.
MIN_ORBAX_VERSION = (0, 12, 3)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be restored (missing, corrupted, or of another structure)."""


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
    """Saves and restores a pytree (a :class:`~jmeta.train.TrainState`) by step.

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
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def is_complete(self, step: int) -> bool:
        """Whether checkpoint ``step``'s folder exists and holds orbax's commit marker."""
        return (self.directory / str(int(step)) / COMMIT_MARKER).is_file()

    def all_steps(self) -> list[int]:
        """The steps of the complete checkpoints, oldest first."""
        self._manager.reload()
        return sorted(s for s in self._manager.all_steps() if self.is_complete(s))

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def save(self, step: int, tree: PyTree) -> None:
        """Writes ``tree`` as checkpoint ``step`` (atomically) and waits until it is on disk."""
        self._remove_incomplete(int(step))
        try:
            self._manager.save(int(step), args=self._ocp.args.StandardSave(_encode(tree)), force=True)
            self._manager.wait_until_finished()
        except Exception as e:  # a full disk / read-only folder: an OSError naming the checkpoint, not orbax's text
            from jmeta._io import output_error

            err = output_error(e, self.directory / str(int(step)))
            if err is None:
                raise
            with contextlib.suppress(OSError):
                self._remove_incomplete(int(step))  # give back the space the partial write took
            raise err from e

    def restore(self, step: int | None, template: PyTree) -> PyTree:
        """Restores checkpoint ``step`` (default: the latest) into ``template``'s structure."""
        if step is None:
            step = self.latest_step()
            if step is None:
                raise CheckpointError(f"no checkpoint found in {self.directory}")
        try:
            restored = self._manager.restore(int(step), args=self._ocp.args.StandardRestore(_encode(template)))
        except Exception as e:  # orbax raises several types; name the file and the cause
            raise CheckpointError(f"cannot restore checkpoint {step} from {self.directory}: "
                                  f"{type(e).__name__}: {e}") from None
        return _decode(restored, template)

    def close(self) -> None:
        self._manager.close()

    def _remove_incomplete(self, step: int) -> None:
        """Deletes leftovers of interrupted writes: temporary folders, and ``step``'s folder if incomplete."""
        removed = False
        for p in self.directory.iterdir():
            if p.is_dir() and TMP_MARKER in p.name:
                shutil.rmtree(p, ignore_errors=True)
                removed = True
        target = self.directory / str(step)
        if target.exists() and not self.is_complete(step):
            shutil.rmtree(target, ignore_errors=True)
            removed = True
        if removed:
            self._manager.reload()


def _is_key(x) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _encode(tree):
    """Typed PRNG keys are stored as their raw data."""
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _decode(tree, template):
    return jax.tree.map(lambda x, t: jax.random.wrap_key_data(x) if _is_key(t) else x, tree, template)
