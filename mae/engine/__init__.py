"""The shared training engine: ``Task`` (what to train) and ``fit`` (how to train it)."""

from mae.engine.loop import NonFiniteLossError, Task, autocast, fit, seed_everything

__all__ = ["NonFiniteLossError", "Task", "autocast", "fit", "seed_everything"]
