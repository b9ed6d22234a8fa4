"""The run-folder lock: one process at a time writes a run folder.

``jmeta train`` (fresh or ``--resume``), ``jmeta eval``, ``jmeta export`` and a
sweep (its folder and each trial folder) hold ``RUN_DIR/.jmeta.lock`` while
they work. The file names the owner (``pid``, ``host``, ``command``, start
time); a second process that finds the folder locked is refused with a
:class:`RunLockedError` naming the owner (``jmeta`` prints it as one line,
exit status 2), so two runs never interleave their ``metrics.jsonl`` or race
for one checkpoint step.

How the lock holds: the owner keeps the file open with an exclusive
``fcntl.flock``. The kernel drops that lock when the process ends in any way,
SIGKILL and crashes included, so a lock can never outlive its owner; the
file itself stays behind after a kill, and the next process takes it over
with a one-line notice naming the dead owner. On a normal exit
(also after an exception or SIGINT/SIGTERM) the owner removes the file.
Where ``flock`` is not available (no ``fcntl``, or a file system that refuses
it), the file is created with ``O_CREAT | O_EXCL`` and a lock whose owner on
this host is no longer running (checked by its pid) is taken over; a lock
written on another host is never taken over (remove the file by hand once
that process is gone).

Creating the lock also tests that the folder is writable (read-only file
system, permissions, a full disk) before any long work starts.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pathlib
import socket
import sys
import time

#: The lock file inside a run folder.
LOCK_NAME = ".jmeta.lock"

try:
    import fcntl
except ImportError:  # not on Windows
    fcntl = None

# flock errors that mean "this file system does not do flock" (use the pid-file fallback)
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


class RunLockedError(RuntimeError):
    """The run folder is locked by another process that is still running."""


def _owner_info(command: str) -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
            "since": time.strftime("%Y-%m-%d %H:%M:%S")}


def _read_owner(path: pathlib.Path) -> dict | None:
    """The owner recorded in a lock file; ``None`` if it is empty or unreadable."""
    try:
        owner = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) and isinstance(owner.get("pid"), int) else None


def _describe(owner: dict | None) -> str:
    if owner is None:
        return "another process"
    return (f"process {owner['pid']} on {owner.get('host', '?')} ({owner.get('command', '?')}, "
            f"since {owner.get('since', '?')})")


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this host (a zombie counts as not running)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    with contextlib.suppress(OSError):  # Linux: a zombie (killed, not yet reaped) holds no lock
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return False
    return True


class RunLock:
    """The lock of one run folder, held from :meth:`acquire` to :meth:`release` (or a ``with`` block).

    Args:
      run_dir: the folder to lock (created if missing).
      command: what the owner does (``"jmeta train"``, ``"jmeta eval"``, ...), shown to the refused.
      notice: where the one-line stale-lock notice goes (default: stderr).

    Raises (on acquiring):
      RunLockedError: another running process holds the folder.
      NotADirectoryError: ``run_dir`` is a file.
      OSError: the folder cannot be written (read-only, no permission, disk full); its ``filename`` is the
        lock file.
    """

    def __init__(self, run_dir, command: str = "jmeta", *, notice=None):
        self.dir = pathlib.Path(run_dir)
        self.path = self.dir / LOCK_NAME
        self.command = command
        self._notice = notice
        self._fd: int | None = None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _say(self, msg: str) -> None:
        print(msg, file=self._notice or sys.stderr, flush=True)

    def acquire(self) -> "RunLock":
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already held by this RunLock")
        if self.dir.exists() and not self.dir.is_dir():
            raise NotADirectoryError(f"the run folder {self.dir} is a file; give a folder (new or a run to resume)")
        self.dir.mkdir(parents=True, exist_ok=True)
        for _ in range(20):  # retried only while other processes create and remove the file under us
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
            try:
                if fcntl is None:
                    raise OSError(errno.ENOSYS, "no fcntl")
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                owner = _read_owner(self.path)
                raise RunLockedError(self._refusal(owner)) from None
            except OSError as e:
                os.close(fd)
                if e.errno not in _NO_FLOCK:
                    raise
                return self._acquire_exclusive_file()
            # Locked; but the file may have been removed (and maybe created anew) since we opened it.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            previous = _read_owner(self.path)
            self._fd = fd
            try:
                self._write(fd)
            except BaseException:
                self.release()  # a full disk: leave no empty lock file behind
                raise
            if previous is not None:
                self._stale_notice(previous)
            return self
        raise RunLockedError(f"{self.dir} is locked and unlocked again and again by other processes; "
                             f"is another jmeta writing it? ({self.path})")

    def _write(self, fd: int) -> None:
        data = (json.dumps(_owner_info(self.command)) + "\n").encode()
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        try:
            if os.write(fd, data) != len(data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
            os.fsync(fd)
        except OSError as e:
            raise OSError(e.errno, e.strerror, str(self.path)) from None

    def _refusal(self, owner: dict | None) -> str:
        me = owner is not None and owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname()
        who = "this process (it is already working on it)" if me else _describe(owner)
        return (f"{self.dir} is in use by {who}; two processes must not write one run folder. Wait for it to "
                f"finish (or stop it), or use another folder (lock file {self.path})")

    def _stale_notice(self, previous: dict) -> None:
        self._say(f"jmeta: taking over the lock of {self.dir} left by {_describe(previous)}, which is no "
                  f"longer running")

    def _acquire_exclusive_file(self) -> "RunLock":
        """The fallback without ``flock``: ``O_CREAT | O_EXCL``, and a stale file taken over by pid."""
        for _ in range(20):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
            except FileExistsError:
                owner = _read_owner(self.path)
                if owner is None:
                    # Being written by its creator right now, or left empty by a kill: give a creator a moment.
                    time.sleep(0.2)
                    owner = _read_owner(self.path)
                local = owner is not None and owner.get("host") == socket.gethostname()
                if owner is not None and (not local or pid_alive(owner["pid"])):
                    raise RunLockedError(self._refusal(owner) + (
                        "" if local else f"; if that process is gone, remove {self.path}")) from None
                # Stale: move it aside atomically (only one taker succeeds), then create ours.
                aside = self.path.with_name(f"{LOCK_NAME}.stale.{os.getpid()}")
                try:
                    os.replace(self.path, aside)
                except FileNotFoundError:
                    continue
                with contextlib.suppress(OSError):
                    os.unlink(aside)
                if owner is not None:
                    self._stale_notice(owner)
                continue
            try:
                self._write(fd)
            except BaseException:
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(self.path)
                raise
            self._fd = fd
            return self
        raise RunLockedError(f"{self.dir}: could not create its lock file {self.path}")

    def release(self) -> None:
        """Removes the lock file (while still holding it, so no other process's lock is removed) and unlocks."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            if os.path.samestat(os.fstat(fd), os.stat(self.path)):
                os.unlink(self.path)
        os.close(fd)


def is_locked(run_dir) -> dict | None:
    """The owner of ``run_dir``'s lock if a running process holds it, else ``None`` (does not take it)."""
    path = pathlib.Path(run_dir) / LOCK_NAME
    owner = _read_owner(path)
    if not path.exists():
        return None
    if fcntl is not None:
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return owner or {}
        except OSError:
            pass
        else:
            return None
        finally:
            os.close(fd)
    if owner is None:
        return None
    local = owner.get("host") == socket.gethostname()
    return owner if (not local or pid_alive(owner["pid"])) else None


__all__ = ["LOCK_NAME", "RunLock", "RunLockedError", "is_locked", "pid_alive"]
