"""Runtime: the executors that run a scheduled step layer by layer on the chosen devices, and the
factory that builds them (with the model and KV tiers they share) from the policy table."""
from .executors.base import Executor, Parts, StepResult
from .factory import Runtime, build_runtime
from .trace import NullTracer, Tracer

__all__ = ["Executor", "Parts", "StepResult", "Runtime", "build_runtime", "NullTracer", "Tracer"]
