"""The shared training engine: ``Task`` (what to train) and ``fit`` (how to train it)."""

from mae.engine.data_order import seed_everything
from mae.engine.distributed import is_main_process
from mae.engine.loop import NonFiniteLossError, Task, fit, write_outputs
from mae.engine.precision import autocast
from mae.engine.resume import changed_setting

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
