"""Runtime: executes one scheduled step layer by layer on the chosen devices."""
from .model_runner import ModelRunner, StepInput

__all__ = ["ModelRunner", "StepInput"]
from .memory import num_device_blocks  # noqa: E402

__all__.append("num_device_blocks")
