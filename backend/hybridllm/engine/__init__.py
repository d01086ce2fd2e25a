"""Engine: the step loop (LLMEngine) over the scheduler and the runtime, sampling and detokenization."""
from .engine import LLMEngine
from .outputs import EngineStats, RequestOutput, StreamDelta

__all__ = ["LLMEngine", "EngineStats", "RequestOutput", "StreamDelta"]
