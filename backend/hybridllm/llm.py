"""LLM: the in-process API (the Python contract in docs/architecture.md)."""
from __future__ import annotations

import itertools
from typing import Iterator, Sequence

from tqdm.auto import tqdm

from .config import EngineConfig
from .engine import LLMEngine, RequestOutput, StreamDelta
from .sampling_params import SamplingParams


class LLM:
    """LLM(model="default" | "/path/to/hf_folder", policy="auto", **engine_options).

    tracer: a runtime.Tracer that records the steps' device and host lanes (Chrome trace)."""

    def __init__(self, model: str = "default", policy: str = "auto", *, tracer=None, **engine_options):
        self.config = EngineConfig.from_kwargs(str(model), policy, engine_options)
        self.engine = LLMEngine(self.config, tracer)
        self.tokenizer = self.engine.tokenizer
        self._ids = itertools.count()

    def generate(self, prompts: str | Sequence[str] | Sequence[Sequence[int]],
                 params: SamplingParams | Sequence[SamplingParams] | None = None,
                 *, use_tqdm: bool = True) -> list[RequestOutput]:
        """Generates for every prompt (text, or a list of token ids); outputs keep the prompts' order."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        prompts = list(prompts)
        if not prompts:
            raise ValueError("prompts is empty")
        if params is None or isinstance(params, SamplingParams):
            params = [params or SamplingParams()] * len(prompts)
        params = list(params)
        if len(params) != len(prompts):
            raise ValueError(f"got {len(params)} SamplingParams for {len(prompts)} prompts")
        ids = self._add_all(prompts, params)
        done: dict[str, RequestOutput] = {}
        with tqdm(total=len(ids), desc="generate", unit="req", disable=None if use_tqdm else True) as bar:
            try:
                while len(done) < len(ids):
                    for out in self.engine.step():
                        if out.finished and out.request_id in ids:
                            done[out.request_id] = out
                            bar.update(1)
            finally:
                for rid in ids:  # on error or Ctrl-C, leave nothing queued or holding blocks
                    if rid not in done:
                        self.engine.abort_request(rid)
        return [done[rid] for rid in ids]

    def stream(self, prompt: str | Sequence[int], params: SamplingParams | None = None) -> Iterator[StreamDelta]:
        """Yields a StreamDelta per new piece of text; the last one has finish_reason set."""
        (rid,) = self._add_all([prompt], [params or SamplingParams()])
        finished = False
        try:
            while not finished:
                for out in self.engine.step():
                    if out.request_id == rid:
                        finished = out.finished
                        if out.delta_text or out.delta_token_ids or finished:
                            yield StreamDelta(out.delta_text, out.delta_token_ids, out.finish_reason)
        finally:
            if not finished:  # the caller stopped early
                self.engine.abort_request(rid)

    def _add_all(self, prompts: list, params: list[SamplingParams]) -> list[str]:
        ids: list[str] = []
        try:
            for prompt, p in zip(prompts, params):
                rid = f"llm-{next(self._ids)}"
                if isinstance(prompt, str):
                    self.engine.add_request(rid, prompt, p)
                else:
                    self.engine.add_request(rid, None, p, prompt_token_ids=list(prompt))
                ids.append(rid)
        except Exception:
            for rid in ids:  # all or nothing
                self.engine.abort_request(rid)
            raise
        return ids
