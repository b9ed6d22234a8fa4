"""The host training loop (jmeta.train.loop) with a toy step function: windows, NaN policy, checkpoints, resume,
stop requests, sinks. The state is the step count; meta-step i (1-based) has loss i, so a record covering the
steps (a, b] holds the loss (a + b + 1) / 2."""

from __future__ import annotations

import json
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
import pytest

from jmeta.train.loop import ListSink, NonFiniteError, TrainLoop, Window, guarded_steps


class Toy:
    """A step function that records its calls; ``bad``: the first non-finite step (stop), ``skip``: the steps
    whose update is skipped (skip)."""

    def __init__(self, bad=None, skip=()):
        self.calls, self.bad, self.skip = [], bad, set(skip)

    def __call__(self, state, step, n):
        assert state == step  # the loop hands the state of the step it names
        self.calls.append((step, n))
        steps = np.arange(step + 1, step + n + 1, dtype=np.float64)
        bad = -1 if self.bad is None or not step <= self.bad < step + n else self.bad
        skipped = sum(1 for i in self.skip if i < step + n)
        return state + n, {"loss": steps.mean()}, bad, skipped


class Ckpts:
    """``checkpoint(step, state, window)`` that keeps what a checkpoint holds (the window as JSON)."""

    def __init__(self):
        self.saved = {}

    def __call__(self, step, state, window):
        self.saved[step] = (state, json.loads(json.dumps(window.to_dict())))


def mean(a, b):
    return (a + b + 1) / 2


def test_records_average_every_step_of_their_window_however_checkpoints_split_it():
    toy, ck, sink, bar = Toy(), Ckpts(), ListSink(), []

    class Bar:
        def update(self, n, postfix=""):
            bar.append((n, postfix))

    loop = TrainLoop(toy, total=10, log_every=4, checkpoint_every=3, sinks=[sink], checkpoint=ck, progress=Bar())
    assert loop.run(0) == 10
    assert toy.calls == [(0, 3), (3, 1), (4, 2), (6, 2), (8, 1), (9, 1)]  # one call per logging/checkpoint step
    assert [(r["step"], r["loss"]) for r in sink.records] == [(4, mean(0, 4)), (8, mean(4, 8)), (10, mean(8, 10))]
    assert all("steps_averaged" not in r and "skipped_updates" not in r and r["time"] >= 0 for r in sink.records)
    assert bar == [(4, "loss 2.5000"), (8, "loss 6.5000"), (10, "loss 9.5000")]
    assert sorted(ck.saved) == [3, 6, 9, 10] and (loop.step, loop.last_checkpoint, loop.stopped) == (10, 10, False)
    assert ck.saved[9][1] == {"window_sums": {"loss": 9.0}, "window_steps": 1, "skipped_updates": 0}


def test_a_resumed_loop_logs_what_an_uninterrupted_one_does():
    whole, ck = ListSink(), Ckpts()
    TrainLoop(Toy(), total=10, log_every=4, checkpoint_every=3, sinks=[whole], checkpoint=ck).run(0)
    for at in (3, 6, 9):
        part = ListSink()
        state, saved = ck.saved[at]
        toy = Toy()
        TrainLoop(toy, total=10, log_every=4, checkpoint_every=3, sinks=[part], checkpoint=Ckpts()).run(
            state, start=at, window=Window.from_dict(saved), window_start=at // 4 * 4)
        assert toy.calls[0][0] == at
        strip = [{k: v for k, v in r.items() if k != "time"} for r in whole.records if r["step"] > at]
        assert [{k: v for k, v in r.items() if k != "time"} for r in part.records] == strip


def test_a_window_lost_on_resume_is_marked_with_steps_averaged():
    sink = ListSink()
    TrainLoop(Toy(), total=10, log_every=4, sinks=[sink]).run(6, start=6, window_start=4)
    assert sink.records[0]["step"] == 8 and sink.records[0]["steps_averaged"] == 2
    assert sink.records[0]["loss"] == mean(6, 8) and "steps_averaged" not in sink.records[1]


def test_stop_policy_raises_before_any_later_record_or_checkpoint():
    sink, ck = ListSink(), Ckpts()
    loop = TrainLoop(Toy(bad=5), total=10, log_every=4, checkpoint_every=2, sinks=[sink], checkpoint=ck,
                     on_nan="stop", nonfinite_message=lambda b: f"bad step {b}, last {max(ck.saved)}")
    with pytest.raises(NonFiniteError, match="bad step 5, last 4") as e:
        loop.run(0)
    assert e.value.step == 5 and sorted(ck.saved) == [2, 4] and [r["step"] for r in sink.records] == [4]
    # without on_nan="stop" a reported bad step is not read (a vectorised sweep's trials diverge one by one)
    assert TrainLoop(Toy(bad=5), total=10, log_every=4).run(0) == 10


def test_skip_policy_counts_skipped_updates_in_every_record():
    sink = ListSink()
    TrainLoop(Toy(skip=(2, 3, 7)), total=8, log_every=4, sinks=[sink], on_nan="skip").run(0)
    assert [r["skipped_updates"] for r in sink.records] == [2, 3]
    sink = ListSink()  # a resumed window carries the count
    TrainLoop(Toy(skip=(7,)), total=8, log_every=4, sinks=[sink], on_nan="skip").run(4, start=4,
                                                                                      window=Window(skipped=2))
    assert sink.records[0]["skipped_updates"] == 1  # advance's count replaces the window's (it is the total)


def test_a_stop_request_checkpoints_the_step_reached_and_returns():
    ck, polls = Ckpts(), []

    def should_stop():
        polls.append(1)
        return len(polls) >= 2

    loop = TrainLoop(Toy(), total=100, log_every=5, checkpoint_every=50, checkpoint=ck, should_stop=should_stop)
    assert loop.run(0) == 10
    assert loop.stopped and loop.step == 10 and sorted(ck.saved) == [10] and ck.saved[10][0] == 10
    # a stop requested at the last step changes nothing
    loop = TrainLoop(Toy(), total=5, log_every=5, checkpoint=ck, should_stop=lambda: True)
    assert loop.run(0) == 5 and not loop.stopped


def test_stop_after_runs_part_of_the_run_and_the_final_record_waits_for_final():
    sink, ck = ListSink(), Ckpts()
    TrainLoop(Toy(), total=6, final=10, log_every=4, sinks=[sink], checkpoint=ck).run(0)
    assert [r["step"] for r in sink.records] == [4] and sorted(ck.saved) == [6]
    assert ck.saved[6][1]["window_steps"] == 2  # the partial window goes with the checkpoint


def test_a_resume_at_the_final_step_logs_its_partial_window_and_updates_that_checkpoint():
    sink, ck, updated = ListSink(), Ckpts(), []
    w = Window({"loss": 11.0}, 2, 0)
    loop = TrainLoop(Toy(), total=6, log_every=4, sinks=[sink], checkpoint=ck,
                     update_window=lambda s, w: updated.append((s, w.steps)))
    assert loop.run(6, start=6, window=w, window_start=4) == 6
    assert [(r["step"], r["loss"]) for r in sink.records] == [(6, 5.5)] and updated == [(6, 0)] and not ck.saved


def test_step_zero_is_checkpointed_and_nothing_is_logged():
    sink, ck = ListSink(), Ckpts()
    TrainLoop(Toy(), total=0, log_every=4, sinks=[sink], checkpoint=ck).run(0)
    assert sink.records == [] and sorted(ck.saved) == [0]


def test_log_every_zero_logs_only_the_final_step_and_sinks_are_written_in_order():
    order = []

    class Named:
        def __init__(self, name):
            self.name = name

        def write(self, step, rec):
            order.append((self.name, step))

    toy = Toy()
    TrainLoop(toy, total=7, log_every=0, sinks=[Named("a"), Named("b")], time_key=None).run(0)
    assert toy.calls == [(0, 7)] and order == [("a", 7), ("b", 7)]


def test_vector_metrics_average_per_configuration():
    sink = ListSink()

    def advance(state, step, n):
        return state, {"loss": np.array([1.0, 2.0]) * (step + 1)}, None, None

    TrainLoop(advance, total=4, log_every=4, checkpoint_every=2, checkpoint=lambda *a: None,
              sinks=[sink]).run(0)
    np.testing.assert_array_equal(sink.records[0]["loss"], [2.0, 4.0])  # (1*2 + 3*2) / 4


def test_a_window_of_one_call_gives_back_its_means_exactly():
    w = Window()
    w.add({"x": 0.1, "y": np.float32(0.3)}, 3)  # 0.1 * 3 / 3 is 0.10000000000000002 in float64
    assert w.pop_mean() == {"x": 0.1, "y": float(np.float32(0.3))} and w.steps == 0
    w = Window.from_dict(json.loads(json.dumps(Window({"a": float("inf"), "b": float("nan")}, 3, 1).to_dict())))
    assert w.sums["a"] == float("inf") and np.isnan(w.sums["b"]) and (w.steps, w.skipped) == (3, 1)


@pytest.mark.parametrize("kw, match", [
    (dict(on_nan="maybe"), "on_nan must be one of 'stop', 'skip', None"),
    (dict(log_every=-1), "log_every"),
    (dict(checkpoint_every=1.5), "checkpoint_every"),
    (dict(final=2), "final"),
])
def test_bad_arguments_are_named(kw, match):
    args = dict(total=4, log_every=2) | kw
    with pytest.raises(ValueError, match=match):
        TrainLoop(Toy(), **args)


def test_a_start_past_final_is_refused():
    with pytest.raises(ValueError, match="start"):
        TrainLoop(Toy(), total=4, log_every=2).run(5, start=5)


class S(NamedTuple):
    x: jnp.ndarray
    step: jnp.ndarray


def _toy_step(state, key, data):
    """x <- x + 1/(x - 2): the update from x=2 (the third step, from 0) is not finite."""
    g = 1.0 / (state.x - 2.0)
    return S(state.x + 1.0, state.step + 1), {"objective": g, "grad_norm": jnp.abs(g)}


@pytest.mark.parametrize("on_nan", ["stop", "skip"])
def test_guarded_steps_stop_or_skip_a_non_finite_update(on_nan):
    run = guarded_steps(_toy_step, on_nan)
    st, bad, skipped, metrics = run(S(jnp.float32(0.0), jnp.int32(0)), jnp.int32(-1), jnp.int32(0), None, None, 4)
    if on_nan == "stop":  # steps 0, 1 applied; step 2 (x=2) and everything after it not
        assert (float(st.x), int(st.step), int(bad), int(skipped)) == (2.0, 2, 2, 0)
    else:  # step 2 dropped, x stays 2 and every later step is bad too; the counter moves on
        assert (float(st.x), int(st.step), int(bad), int(skipped)) == (2.0, 4, -1, 2)
    assert not np.isfinite(float(metrics["objective"]))
    with pytest.raises(ValueError, match="on_nan"):
        guarded_steps(_toy_step, "ignore")


def test_guarded_steps_compile_once_for_every_chunk_length():
    """A checkpoint or resume inside a logging window asks for chunks of other lengths: one compiled program (the
    step traced once), and the metrics are each chunk's mean."""
    traces = []

    def step(state, key, data):
        traces.append(1)
        return _toy_step(state, key, data)

    run = guarded_steps(step, "stop")
    start = (S(jnp.float32(3.0), jnp.int32(0)), jnp.int32(-1), jnp.int32(0), None, None)
    for n in (1, 3, 4):
        st, bad, _, metrics = run(*start, n)
        xs = 3.0 + np.arange(n)
        assert (float(st.x), int(st.step), int(bad)) == (3.0 + n, n, -1)
        np.testing.assert_allclose(float(metrics["objective"]), np.mean(1.0 / (xs - 2.0)), rtol=1e-6)
    assert run._cache_size() == 1 and len(traces) == 1
