"""TensorBoard event files written without TensorFlow, read back with the `tensorboard` package's reader."""

from __future__ import annotations

import struct

import pytest

from jmeta.run.logs import MetricsLog, Progress
from jmeta.run.tensorboard import TensorBoardSink, crc32c, encode_event, masked_crc32c, tfrecord

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
event_file_loader = pytest.importorskip("tensorboard.backend.event_processing.event_file_loader")


def test_crc32c_known_values():
    # RFC 3720 / iSCSI test vectors for CRC-32C.
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"\x00" * 32) == 0x8A9136AA
    assert crc32c(b"\xff" * 32) == 0x62A8AB43
    assert crc32c(bytes(range(32))) == 0x46DD794E


def test_tfrecord_frame_layout():
    data = b"hello"
    rec = tfrecord(data)
    (n,) = struct.unpack("<Q", rec[:8])
    assert n == 5 and rec[12:17] == data
    assert struct.unpack("<I", rec[8:12])[0] == masked_crc32c(rec[:8])
    assert struct.unpack("<I", rec[17:])[0] == masked_crc32c(data)


def test_events_parse_with_protobuf_reader(tmp_path):
    from tensorboard.compat.proto import event_pb2

    e = event_pb2.Event.FromString(encode_event(wall_time=12.5, step=2**40, scalars={"a/b": 0.25, "c": -3.0}))
    assert e.wall_time == 12.5 and e.step == 2**40
    assert [(v.tag, v.simple_value) for v in e.summary.value] == [("a/b", 0.25), ("c", -3.0)]
    assert event_pb2.Event.FromString(encode_event(wall_time=1.0, file_version="brain.Event:2")).file_version \
        == "brain.Event:2"


def test_scalars_round_trip_and_resume_purges_stale_steps(tmp_path):
    sink = TensorBoardSink(tmp_path)
    assert sink.path.name.startswith("events.out.tfevents.")
    for s in (10, 20, 30, 40):
        sink.write(s, {"step": s, "loss": 1.0 / s, "grad_norm": float(s), "note": "text", "flag": True})
    sink.close()
    records = list(event_file_loader.EventFileLoader(str(sink.path)).Load())
    assert records[0].file_version == "brain.Event:2"

    # A resumed run continues from the checkpoint at step 20: steps 30, 40 are re-run.
    sink = TensorBoardSink(tmp_path, resume_step=20)
    for s in (30, 40, 50):
        sink.write(s, {"loss": 2.0 / s})
    sink.close()
    acc = event_accumulator.EventAccumulator(str(tmp_path))
    acc.Reload()
    assert sorted(acc.Tags()["scalars"]) == ["grad_norm", "loss"]  # strings and booleans are not scalars
    loss = [(e.step, e.value) for e in acc.Scalars("loss")]
    assert [s for s, _ in loss] == [10, 20, 30, 40, 50]
    expect = [1 / 10, 1 / 20, 2 / 30, 2 / 40, 2 / 50]
    assert [v for _, v in loss] == pytest.approx(expect, rel=1e-6)
    assert [e.step for e in acc.Scalars("grad_norm")] == [10, 20]


def test_metrics_log_truncate_after_drops_later_and_torn_records(tmp_path):
    p = tmp_path / "metrics.jsonl"
    log = MetricsLog(p)
    for s in (1, 2, 3):
        log.write(s, {"loss": float(s)})
    log.close()
    with open(p, "a") as f:
        f.write('{"step": 4, "lo')  # torn by a kill
    assert MetricsLog.truncate_after(p, 2) == 2
    assert [r["step"] for r in MetricsLog.read(p)] == [1, 2]


def test_progress_shows_rate_and_eta():
    import io

    buf = io.StringIO()
    bar = Progress(100, desc="x", stream=buf, min_interval=0.0)
    bar.update(50, postfix="loss 1.0", force=True)
    bar.close()
    line = buf.getvalue().splitlines()[0]
    assert "50/100" in line and "step/s" in line and "ETA" in line and "loss 1.0" in line
