"""Staggered arrivals: the engine loop the continuous-batching tests share."""
from __future__ import annotations


def run_staggered(engine, prompts, params, every: int) -> dict:
    """Adds prompt i as request f"r{i}" every `every` steps while stepping; checks the KV pools after
    each step; returns the finished outputs by request id."""
    done, pending, step = {}, list(enumerate(prompts)), 0
    while pending or engine.has_unfinished_requests():
        if pending and step % every == 0:
            i, p = pending.pop(0)
            engine.add_request(f"r{i}", p, params)
        for o in engine.step():
            if o.finished:
                done[o.request_id] = o
        engine.kv.check()
        step += 1
    return done
