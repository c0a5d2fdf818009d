"""Learning tasks (data + model + loss) and the ``TASKS`` registry; ``build_task(spec)`` makes one.

Importing this package registers the built-in tasks: synthetic, digits, mnist, cifar10, femnist, npz.
"""

from fedsim.tasks import digits, files, synthetic  # noqa: F401  (imported to register the tasks)
from fedsim.tasks.base import TASKS, Task, TaskFactory, TaskSpec


def build_task(spec: TaskSpec) -> Task:
    """Build the task named ``spec.name`` (unknown name -> UnknownNameError listing valid tasks)."""
    return TASKS.get(spec.name)(spec)


__all__ = ["TASKS", "Task", "TaskSpec", "TaskFactory", "build_task"]
