r"""Sinusoid regression (Finn et al. 2017, section 5.1).

Each task is :math:`y = A \sin(x - \varphi)` with amplitude
:math:`A \sim U[0.1, 5.0]`, phase :math:`\varphi \sim U[0, \pi]` and inputs
:math:`x \sim U[-5, 5]`; the support and the query set hold ``k_support``
and ``k_query`` points. Sampling is a pure function of a key and runs inside
the jitted meta-step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jmeta import validate
from jmeta._struct import hparam, static_dataclass
from jmeta.tasks.base import TaskBatch, check_no_data


def _size(name: str, value) -> int:
    return validate.integer(f"Sinusoid.{name}", value, min=1)


@static_dataclass(eq=True)
class Sinusoid:
    """The sinusoid task family.

    Attributes:
      k_support: support points per task (``K``), ``>= 1``.
      k_query: query points per task, ``>= 1``.
      amplitude: ``(low, high)`` of the uniform amplitude.
      phase: ``(low, high)`` of the uniform phase.
      x_range: ``(low, high)`` of the uniform inputs.
      dtype: dtype of the arrays.

    Example:
      >>> tasks = Sinusoid(k_support=10, k_query=10)
      >>> batch = tasks.sample(jax.random.key(0), 25)  # TaskBatch, x: [25, 10, 1]
      >>> step = jmeta.make_meta_step(maml, tasks.sample, optax.adam(1e-3), meta_batch_size=25)

    Like every task family it samples with ``sample(key, num_tasks, data)``; it needs no ``data``
    (``None``, the default). It is hashable and a pytree without leaves, so it can be a static argument
    of ``jit`` or an ordinary one.
    """

    k_support: int = hparam(10, _size)
    k_query: int = hparam(10, _size)
    amplitude: tuple[float, float] = (0.1, 5.0)
    phase: tuple[float, float] = (0.0, float(jnp.pi))
    x_range: tuple[float, float] = (-5.0, 5.0)
    dtype: str = "float32"

    def __post_init__(self):
        for name in ("amplitude", "phase", "x_range"):
            lo, hi = getattr(self, name)
            if not lo <= hi:
                raise ValueError(f"Sinusoid.{name} must be (low, high) with low <= high, got {(lo, hi)}")

    def sample_params(self, key, num_tasks: int):
        """Amplitudes and phases ``([B], [B])``."""
        ka, kp = jax.random.split(key)
        amp = jax.random.uniform(ka, (num_tasks,), self.dtype, *self.amplitude)
        phase = jax.random.uniform(kp, (num_tasks,), self.dtype, *self.phase)
        return amp, phase

    def sample(self, key, num_tasks: int, data=None) -> TaskBatch:
        """Samples a :class:`TaskBatch` of ``num_tasks`` tasks (``x, y: [B, K, 1]``).

        Args:
          key: a ``jax.random.key``.
          num_tasks: ``B`` (static under ``jit``).
          data: ``None`` (or an empty pytree): the family needs no data; the argument is there so that
            every task family samples with the same signature ``sample(key, num_tasks, data)``.
        """
        check_no_data("Sinusoid.sample", data)
        return self.sample_with_params(key, num_tasks)[0]

    def sample_with_params(self, key, num_tasks: int):
        """``(TaskBatch, amplitudes [B], phases [B])``: :meth:`sample`'s tasks and the parameters behind them."""
        num_tasks = validate.integer("num_tasks", num_tasks, min=1)
        kt, kx = jax.random.split(key)
        amp, phase = self.sample_params(kt, num_tasks)
        n = self.k_support + self.k_query
        x = jax.random.uniform(kx, (num_tasks, n, 1), self.dtype, *self.x_range)
        y = amp[:, None, None] * jnp.sin(x - phase[:, None, None])
        k = self.k_support
        return TaskBatch(x[:, :k], y[:, :k], x[:, k:], y[:, k:]), amp, phase

    @staticmethod
    def function(amp, phase, x):
        """The ground truth ``amp * sin(x - phase)``."""
        return amp * jnp.sin(x - phase)
