"""Optional Weights & Biases logging (``jmeta train --wandb``).

``wandb`` is imported only when a :class:`WandbSink` is created; it is not a
dependency of jmeta (``pip install wandb``). Offline mode
(``mode="offline"`` or ``WANDB_MODE=offline``) writes the run under
``RUN_DIR/wandb/`` without touching the network; upload it later with
``wandb sync RUN_DIR/wandb/offline-run-*``.

The W&B run id is stored in ``RUN_DIR/wandb_id.txt`` so that ``jmeta train
--resume RUN_DIR`` continues the same W&B run.
"""

from __future__ import annotations

import os
import pathlib
import secrets

MODES = ("online", "offline", "disabled")


class WandbSink:
    """A metric sink logging each record with ``wandb.log(record, step=step)``.

    Args:
      run_dir: the jmeta run folder (W&B files go to ``run_dir/wandb``).
      config: the run's config as a dict (shown in the W&B UI).
      project: W&B project name.
      name: W&B run name (default: the run folder's name).
      mode: ``"online"``, ``"offline"`` or ``"disabled"``; default
        ``$WANDB_MODE`` or ``"online"``.
      entity: W&B entity (team or user), default the logged-in user's.

    Raises:
      ImportError: if ``wandb`` is not installed (the message says how to install it).
      ValueError: on an unknown ``mode``.
    """

    def __init__(self, run_dir, config: dict | None = None, *, project: str = "jmeta", name: str | None = None,
                 mode: str | None = None, entity: str | None = None):
        mode = mode or os.environ.get("WANDB_MODE") or "online"
        if mode not in MODES:
            raise ValueError(f"wandb mode must be one of {list(MODES)}, got {mode!r}")
        try:
            import wandb
        except ImportError:
            raise ImportError("--wandb needs the wandb package: pip install wandb "
                              "(or drop --wandb; TensorBoard files are written without it)") from None
        run_dir = pathlib.Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        id_file = run_dir / "wandb_id.txt"
        run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(4)
        self.run = wandb.init(project=project, entity=entity, name=name or run_dir.name, id=run_id,
                              resume="allow", dir=str(run_dir), config=config or {}, mode=mode)
        id_file.write_text(run_id + "\n")
        self._closed = False

    def write(self, step: int, record: dict) -> None:
        data = {k: v for k, v in record.items()
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        if data and not self._closed:
            self.run.log(data, step=int(step))

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.run.finish()


__all__ = ["MODES", "WandbSink"]
