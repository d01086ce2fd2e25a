"""Scheduling: requests, continuous batching (Scheduler) and NEO's two-tier scheduling (NeoScheduler).

Pure of torch, devices, clocks and I/O: each step reads the queues and the block tables and returns a
frozen SchedulerOutput of StepInputs placed in SubBatches, which the runtime's executors run.
"""
from .neo_scheduler import NeoScheduler
from .request import Request, RequestStatus
from .scheduler import Scheduler
from .step import BlockCopy, SchedulerOutput, StepInput, SubBatch, is_decode

__all__ = ["NeoScheduler", "Request", "RequestStatus", "Scheduler", "BlockCopy", "SchedulerOutput", "StepInput",
           "SubBatch", "is_decode"]
