"""Checkpoints with orbax: periodic and final, the last few kept, written atomically.

Orbax writes each checkpoint into a temporary folder and renames it into
place only once every file is on disk (``commit_success.txt`` marks a
complete one), so a write interrupted midway (the process killed, the disk
full) never leaves a checkpoint that loads as valid, and the previous one
stays loadable. :class:`Checkpointer` restores into a template of the same
structure, so a checkpoint from another config fails with a clear error.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax

PyTree = Any


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be restored (missing, corrupted, or of another structure)."""


class Checkpointer:
    """Saves and restores a pytree (a :class:`~jmeta.train.TrainState`) by step.

    Args:
      directory: the checkpoint folder (created if missing).
      keep: how many checkpoints to keep (oldest deleted first).
    """

    def __init__(self, directory, *, keep: int = 3):
        import orbax.checkpoint as ocp

        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self._ocp = ocp
        self.directory = pathlib.Path(directory).absolute()
        self.directory.mkdir(parents=True, exist_ok=True)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def all_steps(self) -> list[int]:
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def save(self, step: int, tree: PyTree) -> None:
        """Writes ``tree`` as checkpoint ``step`` (atomically) and waits until it is on disk."""
        self._manager.save(int(step), args=self._ocp.args.StandardSave(_encode(tree)), force=True)
        self._manager.wait_until_finished()

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


def _is_key(x) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _encode(tree):
    """Typed PRNG keys are stored as their raw data."""
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _decode(tree, template):
    return jax.tree.map(lambda x, t: jax.random.wrap_key_data(x) if _is_key(t) else x, tree, template)
