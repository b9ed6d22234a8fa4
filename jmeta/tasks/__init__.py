"""Task families: pure samplers ``sample(key, num_tasks, data) -> TaskBatch`` (``data=None`` for data-free ones)."""

from jmeta.tasks.base import TaskBatch, task_at, validate_task_batch
from jmeta.tasks.episodes import EpisodeSampler, EpisodeTasks, put_on_device
from jmeta.tasks.sinusoid import Sinusoid

__all__ = ["EpisodeSampler", "EpisodeTasks", "Sinusoid", "TaskBatch", "put_on_device", "task_at", "validate_task_batch"]
