"""Engine: requests, continuous-batching scheduler, sampling and detokenization."""
from .engine import LLMEngine
from .outputs import EngineStats, RequestOutput, StreamDelta
from .request import Request, RequestStatus
from .scheduler import Scheduler, SchedulerOutput

__all__ = ["LLMEngine", "EngineStats", "RequestOutput", "StreamDelta", "Request", "RequestStatus", "Scheduler", "SchedulerOutput"]
