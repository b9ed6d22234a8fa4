"""TensorBoard event files written by hand: no TensorFlow, no protobuf package.

An event file is a sequence of TFRecords, each holding one serialized
``tensorflow.Event`` protocol buffer. A TFRecord is::

    uint64 length (little endian)
    uint32 masked_crc32c(length bytes)
    bytes  data[length]
    uint32 masked_crc32c(data)

with the CRC-32C (Castagnoli, reflected polynomial ``0x82F63B78``) masked as
``((crc >> 15 | crc << 17) + 0xA282EAD8) mod 2**32``. The protobuf messages
used (field number, wire type)::

    Event      { double wall_time = 1; int64 step = 2;
                 oneof { string file_version = 3; Summary summary = 5; SessionLog session_log = 7; } }
    Summary    { repeated Value value = 1; }
    Value      { string tag = 1; float simple_value = 2; }
    SessionLog { enum Status status = 1; }   # START = 1

The first record of a file is ``Event{file_version="brain.Event:2"}``. The
file is named ``events.out.tfevents.<unix time>.<host>.<pid>`` (TensorBoard
recognises any name containing ``tfevents``).

Resuming: a resumed run writes a new event file that starts with
``SessionLog{status=START}`` at step ``start + 1``; TensorBoard's reader then
discards events of step ``> start`` written before the restart (those steps
are re-run from the checkpoint), exactly as ``metrics.jsonl`` is truncated.

Example::

    sink = TensorBoardSink("runs/my-run")
    sink.write(100, {"loss": 0.5, "grad_norm": 2.0})
    sink.close()            # then: tensorboard --logdir runs
"""

from __future__ import annotations

import os
import pathlib
import socket
import struct
import time

from jmeta._io import naming

FILE_VERSION = "brain.Event:2"

# -- CRC-32C ------------------------------------------------------------------------------------------------------


def _crc32c_table() -> list[int]:
    poly = 0x82F63B78
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ poly if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE: list[int] | None = None


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of ``data``; ``crc32c(b"123456789") == 0xE3069283``."""
    global _TABLE
    if _TABLE is None:
        _TABLE = _crc32c_table()
    t = _TABLE
    crc = 0xFFFFFFFF
    for b in data:
        crc = t[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC: ``((crc >> 15 | crc << 17) + 0xA282EAD8) mod 2**32``."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(data: bytes) -> bytes:
    """One TFRecord frame around ``data``."""
    length = struct.pack("<Q", len(data))
    return (length + struct.pack("<I", masked_crc32c(length)) + data
            + struct.pack("<I", masked_crc32c(data)))


# -- protobuf wire format --------------------------------------------------------------------------------------------

def _varint(n: int) -> bytes:
    if n < 0:
        n &= (1 << 64) - 1  # int64 negatives: two's complement, 10 bytes
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint((field << 3) | wire)


def _bytes_field(field: int, payload: bytes) -> bytes:
    return _key(field, 2) + _varint(len(payload)) + payload


def _value(tag: str, value: float) -> bytes:
    return _bytes_field(1, tag.encode("utf-8")) + _key(2, 5) + struct.pack("<f", value)


def encode_event(*, wall_time: float, step: int = 0, file_version: str | None = None,
                 scalars: dict | None = None, session_start: bool = False) -> bytes:
    """The serialized ``Event`` proto (exactly one of ``file_version``, ``scalars``, ``session_start``)."""
    out = _key(1, 1) + struct.pack("<d", float(wall_time))
    if step:
        out += _key(2, 0) + _varint(int(step))
    if file_version is not None:
        out += _bytes_field(3, file_version.encode("utf-8"))
    if scalars is not None:
        summary = b"".join(_bytes_field(1, _value(str(k), float(v))) for k, v in scalars.items())
        out += _bytes_field(5, summary)
    if session_start:
        out += _bytes_field(7, _key(1, 0) + _varint(1))
    return out


def _scalars(record: dict) -> dict:
    out = {}
    for k, v in record.items():
        if k == "step" or isinstance(v, bool):
            continue
        if isinstance(v, (int, float)):
            out[k] = float(v)
        elif isinstance(v, str) and v in ("nan", "inf", "-inf"):
            out[k] = float(v)
    return out


class TensorBoardSink:
    """A metric sink writing scalars to a TensorBoard event file.

    Args:
      logdir: folder of the event file (created if missing); with
        ``tensorboard --logdir PARENT`` each run folder is one TensorBoard run.
      resume_step: when continuing a run from the checkpoint of this step,
        marks a restart (see the module docstring) so stale later steps are dropped.

    ``write(step, record)`` logs every numeric entry of ``record`` (except
    ``step``) as a scalar with its key as tag; ``close()`` closes the file.
    """

    def __init__(self, logdir, *, resume_step: int | None = None):
        self.logdir = pathlib.Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        now = time.time()
        base = f"events.out.tfevents.{int(now):010d}.{socket.gethostname()}.{os.getpid()}"
        path, i = self.logdir / base, 0
        while path.exists():  # two writers in one second in one process
            i += 1
            path = self.logdir / f"{base}.{i}"
        self.path = path
        self._f = open(self.path, "wb")
        self._emit(encode_event(wall_time=now, file_version=FILE_VERSION))
        if resume_step is not None:
            self._emit(encode_event(wall_time=now, step=int(resume_step) + 1, session_start=True))
        with naming(self.path):
            self._f.flush()

    def _emit(self, event: bytes) -> None:
        with naming(self.path):  # a full disk names this file
            self._f.write(tfrecord(event))

    def write(self, step: int, record: dict) -> None:
        scalars = _scalars(record)
        if not scalars or self._f.closed:
            return
        self._emit(encode_event(wall_time=time.time(), step=int(step), scalars=scalars))
        with naming(self.path):
            self._f.flush()

    def close(self) -> None:
        if not self._f.closed:
            with naming(self.path):
                self._f.close()


__all__ = ["FILE_VERSION", "TensorBoardSink", "crc32c", "encode_event", "masked_crc32c", "tfrecord"]
