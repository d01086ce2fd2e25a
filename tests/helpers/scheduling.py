"""Driving a scheduler without a model: requests, and what the engine does after a step."""
from hybridllm.scheduler import Request, RequestStatus
from hybridllm.sampling_params import SamplingParams


def req(rid, prompt_len, max_tokens=4):
    return Request(rid, None, list(range(1, prompt_len + 1)), SamplingParams(max_tokens=max_tokens),
                   detokenizer=None, generator=None, max_total_tokens=10**9)


def run_step(sched, out, token=5):
    """What the engine does after the model ran: advance, sample, finish."""
    for s in out.scheduled:
        r = sched.requests[s.request_id]
        r.num_computed_tokens += len(s.token_ids)
        if s.sample:
            r.output_token_ids.append(token)
            if len(r.output_token_ids) >= r.params.max_tokens:
                sched.finish(r, RequestStatus.FINISHED_LENGTH)
