"""Scheduling: requests, continuous batching (Scheduler) and NEO's two-tier scheduling (NeoScheduler).

Pure of devices, clocks and I/O: each step reads the queues and the KV manager's bookkeeping and
returns a frozen SchedulerOutput of StepInputs, which the engine hands to the runtime's executors.
"""
from .neo_scheduler import NeoScheduler
from .request import Request, RequestStatus
from .scheduler import Scheduler
from .step import BlockCopy, SchedulerOutput, StepInput

__all__ = ["NeoScheduler", "Request", "RequestStatus", "Scheduler", "BlockCopy", "SchedulerOutput", "StepInput"]
