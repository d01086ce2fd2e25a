"""One OpenAI call -> one Triton request per prompt and choice, run together, merged by choice index.

Choice i*n + j is prompt i's j-th choice; with a seed, choice c samples with seed + c (vLLM's rule), so
the choices differ and each is reproducible alone. best_of > n generates best_of per prompt and keeps the
n with the highest cumulative logprob. Usage: each prompt's tokens once, every generated token (the
best_of candidates' too) counted. A failure in one request cancels the others and is the call's error.
"""
from __future__ import annotations

import asyncio
import logging

from .protocol import APIError, Call
from .responses import Choice

log = logging.getLogger("hybridllm")


class Fanout:
    def __init__(self, call: Call, generate, is_disconnected):
        """generate(prompt, sampling, is_disconnected): async iterator of client.Chunk (TritonBridge.generate)."""
        self.call = call
        self._generate, self._gone = generate, is_disconnected
        per = call.best_of
        self.runs: list[tuple[Choice, object, dict]] = []
        for i, prompt in enumerate(call.prompts):
            for j in range(per):
                c = Choice(index=i * per + j, prompt_index=i)
                sampling = dict(call.sampling)
                if "seed" in sampling:
                    sampling["seed"] = sampling["seed"] + c.index
                self.runs.append((c, prompt, sampling))

    @property
    def choices(self) -> list[Choice]:
        return [c for c, _, _ in self.runs]

    def apply(self, c: Choice, p) -> None:
        """Folds one Triton response into its choice."""
        c.num_input_tokens = p.num_input_tokens or c.num_input_tokens
        if p.prompt_logprobs is not None:
            c.prompt_logprobs = list(p.prompt_logprobs)
        if self.call.prompt_only:               # max_tokens=0: the one token made is dropped
            c.finish_reason = "length" if p.finish_reason else None
            return
        c.text += p.text
        c.token_ids += p.token_ids
        c.logprobs += p.logprobs
        c.finish_reason = p.finish_reason or c.finish_reason

    async def _run(self, c: Choice, prompt, sampling) -> None:
        async for p in self._generate(prompt, sampling, self._gone):
            self.apply(c, p)

    async def collect(self) -> list[Choice]:
        """stream=false: every request to its end; returns the choices to answer with, by index."""
        tasks = [asyncio.create_task(self._run(*r)) for r in self.runs]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for t in done:
                if t.exception() is not None:
                    raise t.exception()
        finally:
            for t in tasks:
                t.cancel()                      # a cancelled request's stream cancels it on Triton
        return self.best()

    def best(self) -> list[Choice]:
        call = self.call
        if call.best_of == call.n:
            return self.choices
        out = []
        for i in range(len(call.prompts)):
            mine = [c for c in self.choices if c.prompt_index == i]
            mine.sort(key=lambda c: c.cumulative_logprob, reverse=True)
            for j, c in enumerate(mine[:call.n]):
                c.index = i * call.n + j
                out.append(c)
        return out

    async def stream(self):
        """stream=true: yields (choice, response) as they come from any request; raises APIError."""
        q: asyncio.Queue = asyncio.Queue()

        async def one(c, prompt, sampling):
            try:
                async for p in self._generate(prompt, sampling, self._gone):
                    q.put_nowait((c, p))
            except APIError as e:
                q.put_nowait((c, e))
            except Exception as e:  # noqa: BLE001 - reported to the client as the stream's error
                log.exception("openai frontend: a request failed")
                q.put_nowait((c, APIError(500, f"{type(e).__name__}: {e}", kind="server_error")))
            finally:
                q.put_nowait((c, None))
        tasks = [asyncio.create_task(one(*r)) for r in self.runs]
        left = len(tasks)
        try:
            while left:
                c, item = await q.get()
                if item is None:
                    left -= 1
                elif isinstance(item, APIError):
                    raise item
                else:
                    yield c, item
        finally:
            for t in tasks:
                t.cancel()

    def usage(self) -> tuple[int, int]:
        """(prompt tokens, completion tokens) of the whole call."""
        per_prompt: dict[int, int] = {}
        for c in self.choices:
            per_prompt[c.prompt_index] = max(per_prompt.get(c.prompt_index, 0), c.num_input_tokens)
        return sum(per_prompt.values()), sum(len(c.token_ids) for c in self.choices)
