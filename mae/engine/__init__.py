"""The shared training engine: ``Task`` (what to train) and ``fit`` (how to train it)."""

from mae.engine.distributed import is_main_process
from mae.engine.loop import NonFiniteLossError, Task, changed_setting, fit, seed_everything, write_outputs
from mae.engine.precision import autocast

__all__ = [
    "NonFiniteLossError",
    "Task",
    "autocast",
    "changed_setting",
    "fit",
    "is_main_process",
    "seed_everything",
    "write_outputs",
]
