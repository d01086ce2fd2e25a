"""Driving a scheduler without a model: requests, and what the engine does after a step."""
from hybridllm.kv import Tier
from hybridllm.scheduler import Request, RequestStatus, SubBatch
from hybridllm.sampling_params import SamplingParams


def req(rid, prompt_len, max_tokens=4):
    return Request(rid, None, list(range(1, prompt_len + 1)), SamplingParams(max_tokens=max_tokens),
                   detokenizer=None, generator=None, max_total_tokens=10**9)


def run_step(sched, out, token=5):
    """What the engine does after the model ran: the scheduler advances, then sample and finish."""
    rows, _ = sched.update(out, {}, [s.request_id for s in out.scheduled if s.sample])
    for r in rows:
        r.output_token_ids.append(token)
        if len(r.output_token_ids) >= r.params.max_tokens:
            sched.finish(r, RequestStatus.FINISHED_LENGTH)


def placement(out) -> dict[str, str]:
    """NEO's placement of each scheduled sequence, read from its sub-batch: "device" (A on the device
    tier), "device_to_host" (A, a fresh prefill whose KV goes to the host tier) or "host" (B)."""
    names = {("A", Tier.DEVICE): "device", ("A", Tier.HOST): "device_to_host", ("B", Tier.HOST): "host"}
    return {s.request_id: names[(b.part, b.tier)] for b in out.batches for s in b.seqs}


def on_device(*seqs, policy="gpu_only"):
    """StepInputs as the one sub-batch of a device-tier executor's step."""
    return [SubBatch(policy, Tier.DEVICE, tuple(seqs))]


def on_host(*seqs, policy="cpu_only"):
    return [SubBatch(policy, Tier.HOST, tuple(seqs))]
