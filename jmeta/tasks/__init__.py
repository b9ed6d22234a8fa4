"""Task families: pure samplers ``sample(key, num_tasks) -> TaskBatch``."""

from jmeta.tasks.base import TaskBatch, task_at, validate_task_batch
from jmeta.tasks.sinusoid import Sinusoid

__all__ = ["Sinusoid", "TaskBatch", "task_at", "validate_task_batch"]
