"""LLMEngine: add / abort / step. Never imports Triton.

One path for every policy, one call per stage of a step: the scheduler (plain or NEO's, as the policy
table says) returns the step's sub-batches, each placed on a KV tier and an executor; the runtime
starts the tier moves and runs each executor's sub-batches; the scheduler advances its requests from
the result; the engine samples every row in one host transfer, appends, and makes the outputs.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import torch
from tokenizers import Tokenizer

from ..config import EngineConfig
from ..models.config import ModelConfig
from ..models.default import resolve_model
from ..policy.step_planner import describe
from ..runtime import Runtime, StepResult, Tracer, build_runtime
from ..runtime.cpu.host_precision import host_precision
from ..sampling_params import SamplingParams
from ..scheduler import NeoScheduler, Request, RequestStatus, Scheduler, SchedulerOutput
from .detokenizer import IncrementalDetokenizer
from .outputs import EngineStats, RequestOutput
from .profiles import find_profile
from .sampler import RowHistory, TokenLogprob, prompt_logprobs, sample
from .stop import find_stop, held_back

log = logging.getLogger("hybridllm")


class LLMEngine:
    def __init__(self, config: EngineConfig, tracer: Tracer | None = None):
        self.config = config
        self.tracer = tracer
        self.model_path = resolve_model(config.model)
        self.model_config = mc = ModelConfig.from_folder(self.model_path)
        self.tokenizer = _load_tokenizer(self.model_path)
        # cpu_only's precision: what the profile's host GEMMs are timed at and what the runtime builds.
        precision = host_precision(config.weight_dtype, self.model_path, config.dynamic_quant_group_size)
        profile, found = find_profile(config, mc, precision)
        self.runtime = rt = build_runtime(config, self.model_path, mc, profile, tracer, precision)
        self.model = rt.model
        self.device = rt.device
        self.kv = rt.block_tables()          # the scheduler's bookkeeping over the runtime's tiers
        self.scheduler = make_scheduler(rt, self.kv, config.enable_prefix_caching, str(self.model_path))
        self.max_model_len = rt.max_model_len
        self.eos_token_ids = set(mc.eos_token_ids) | _generation_eos(self.model_path)
        self._eos_list = sorted(self.eos_token_ids)      # what min_tokens masks
        self._num_steps = 0
        self._num_preemptions = 0
        self._next_seed = config.seed
        log.info("engine ready: model=%s device=%s policy=%s -> prefill %s, decode %s (%s%s); KV blocks %s; "
                 "max_model_len=%d", self.model_path, self.device, config.policy, rt.prefill_policy,
                 rt.decode_policy, rt.reason, f"; {found}" if found else "",
                 {t.value: self.kv.pool(t).num_blocks for t in self.kv.tiers}, self.max_model_len)
        if rt.planner is not None:
            for line in describe(rt.planner, self.max_model_len):
                log.info("auto: %s", line)

    # -- requests --------------------------------------------------------------

    def add_request(self, request_id: str, prompt: str | None, params: SamplingParams | None = None,
                    prompt_token_ids: list[int] | None = None) -> None:
        """Queues a request. Raises ValueError/TypeError, changing nothing, on bad input."""
        params = params if params is not None else SamplingParams()
        if not isinstance(params, SamplingParams):
            raise TypeError(f"params must be SamplingParams, got {type(params).__name__}")
        if not isinstance(request_id, str) or not request_id:
            raise ValueError(f"request_id must be a non-empty string, got {request_id!r}")
        if self.scheduler.has(request_id):
            raise ValueError(f"request_id {request_id!r} is already in use")
        if prompt is not None and prompt_token_ids is not None:
            raise ValueError("give either prompt or prompt_token_ids, not both")
        if prompt_token_ids is None:
            if not isinstance(prompt, str):
                raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
            if not prompt:
                raise ValueError("prompt is empty")
            prompt_token_ids = self.tokenizer.encode(prompt).ids
        else:
            prompt_token_ids = list(prompt_token_ids)
            vocab = self.model_config.vocab_size
            bad = [t for t in prompt_token_ids if not isinstance(t, int) or not 0 <= t < vocab]
            if bad:
                raise ValueError(f"prompt_token_ids: {bad[0]!r} is not a token id in [0, {vocab})")
        if not prompt_token_ids:
            raise ValueError("prompt is empty (it has no tokens)")
        if len(prompt_token_ids) >= self.max_model_len:
            raise ValueError(
                f"prompt is {len(prompt_token_ids)} tokens; the context holds {self.max_model_len} "
                f"(max_model_len), so the prompt must be at most {self.max_model_len - 1}")
        generator = None
        if not params.greedy:
            seed = params.seed if params.seed is not None else self._take_seed()
            generator = torch.Generator().manual_seed(seed)
        detok = IncrementalDetokenizer(self.tokenizer, prompt_token_ids)
        self.scheduler.add(Request(request_id, prompt, prompt_token_ids, params, detok, generator,
                                   self.max_model_len))

    def abort_request(self, request_id: str) -> bool:
        """Drops the request and frees its blocks. False if it is unknown or already done."""
        return self.scheduler.abort(request_id) is not None

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished()

    def stats(self) -> EngineStats:
        return EngineStats(
            num_running=self.scheduler.num_running, num_waiting=self.scheduler.num_waiting,
            blocks_used={t.value: self.kv.num_used(t) for t in self.kv.tiers},
            blocks_total={t.value: self.kv.pool(t).num_blocks for t in self.kv.tiers},
            num_preemptions=self._num_preemptions, num_steps=self._num_steps,
            steps_by_policy=dict(self.runtime.steps_by_policy), **self._cache_stats())

    def _cache_stats(self) -> dict:
        c = self.scheduler.cache
        tiers = [t.value for t in self.kv.tiers]
        return dict(prefix_cache_queries={t: c.tier(t).queries for t in tiers},
                    prefix_cache_hits={t: c.tier(t).hits for t in tiers},
                    blocks_cached={t.value: self.kv.num_cached(t) for t in self.kv.tiers},
                    cache_evictions={t.value: self.kv.pool(t).stats.evictions for t in self.kv.tiers},
                    kv_promotions=c.promotions, kv_demotions=c.demotions, host_hit_placements=c.host_placements)

    # -- the loop --------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """Runs one batch; returns an output for every request that got a token or ended."""
        out = self.scheduler.schedule()
        self._note(out)
        if out.empty:
            return []
        result = self.runtime.execute(out)                   # the tier moves, then each executor's sub-batches
        self._num_steps += 1
        # A failed request may still have a logits row (a host-bound prefill whose K/V did not land).
        rows, failed = self.scheduler.update(out, result.failed, result.sampled)
        gaps = self._score_prompt(result) if result.prompt_spans else []
        if gaps:                                             # never a short list of prompt logprobs: an error
            failed = failed + gaps
            result = dataclasses.replace(result, failed={**result.failed, **{r.request_id: e for r, e in gaps}})
        return self._outputs(result, rows, failed)

    def _score_prompt(self, result: StepResult) -> list[tuple[Request, str]]:
        """Prompt logprobs: row r of a span (request_id, position p, n rows) predicts prompt token p + r + 1.
        Positions already scored (a prefill recomputed after preemption) are skipped. Returns the requests
        whose earlier positions were never scored (their KV came from elsewhere, e.g. a prefix cache hit),
        to be ended with an error rather than answered with a short list."""
        row, gaps = 0, []
        for rid, pos, n in result.prompt_spans:
            lo, row = row, row + n
            req = self.scheduler.get(rid)
            if req is None or rid in result.failed:
                continue
            skip = len(req.prompt_logprobs) - pos       # entries so far cover positions 0 .. len - 1
            if skip < 0:
                gaps.append((req, f"prompt_logprobs: positions {len(req.prompt_logprobs)}..{pos - 1} of the prompt "
                                  "were not computed (a request asking for prompt logprobs must prefill its whole prompt)"))
                continue
            if skip >= n:
                continue
            targets = req.prompt_token_ids[pos + 1 + skip:pos + 1 + n]
            req.prompt_logprobs += prompt_logprobs(result.prompt_logits[lo + skip:lo + n], targets,
                                                   req.params.prompt_logprobs)
        return gaps

    def _note(self, out: SchedulerOutput) -> None:
        self._num_preemptions += len(out.preempted)
        if self.tracer is None and not log.isEnabledFor(logging.DEBUG):
            return
        # The StepPlanner's choices per tier; the prefix cache's promotions, demotions and host placements.
        notes = [("scheduler" if n.startswith("prefix cache") else "planner", n) for n in out.notes]
        if out.host_choice is not None:                      # NEO's host sub-batch; formatted only when read
            notes.append(("scheduler", out.host_choice.describe()))
        for lane, note in notes:
            log.debug("step %d: %s", self._num_steps, note)
            if self.tracer is not None:
                self.tracer.instant(lane, note, step=self._num_steps)

    def _outputs(self, result: StepResult, rows: list[Request], failed: list[tuple[Request, str]]):
        """Samples every row in one host transfer, appends the tokens, and makes the outputs."""
        outs = [self._fail(req, err) for req, err in failed]
        history = [RowHistory(r.prompt_token_ids, r.output_token_ids) if r.params.penalized else None for r in rows]
        tokens, logprobs = sample(result.logits, [r.params for r in rows], [r.generator for r in rows],
                                  result.greedy, history, self._eos_list)
        return outs + [self._append(req, tok, lp) for req, tok, lp in zip(rows, tokens, logprobs)
                       if req.request_id not in result.failed]

    def _fail(self, req: Request, error: str) -> RequestOutput:
        """Ends one request with an error (its blocks freed); the others carry on."""
        log.error("request %s failed: %s", req.request_id, error)
        req.error = error
        self.scheduler.finish(req, RequestStatus.FINISHED_ERROR)
        return self._output(req)

    def _append(self, req: Request, token: int, logprob: TokenLogprob | None = None) -> RequestOutput:
        req.output_token_ids.append(token)
        p = req.params
        if logprob is not None:
            req.logprobs.append(logprob)
            req.cumulative_logprob += logprob.logprob
        status = None
        if (token in self.eos_token_ids and not p.ignore_eos) or token in p.stop_token_ids:
            status = RequestStatus.FINISHED_STOPPED
        else:
            before = len(req.text)
            req.text += req.detokenizer.push(token)
            if p.stop and len(req.output_token_ids) >= p.min_tokens:
                cut = find_stop(req.text, before, p.stop)
                if cut != -1:
                    req.text = req.text[:cut]
                    status = RequestStatus.FINISHED_STOPPED
        if status is None and (len(req.output_token_ids) >= p.max_tokens or req.num_tokens >= req.max_total_tokens):
            status = RequestStatus.FINISHED_LENGTH
            req.text += req.detokenizer.flush()
        if status is not None:
            self.scheduler.finish(req, status)
        return self._output(req)

    def _output(self, req: Request) -> RequestOutput:
        end = len(req.text)
        done = req.status.finished
        if not done and req.params.stop:
            end -= held_back(req.text, req.params.stop)
        delta = req.text[req.num_sent_chars:end]
        req.num_sent_chars = max(req.num_sent_chars, end)
        start = req.num_sent_tokens
        new_ids = tuple(req.output_token_ids[start:])
        req.num_sent_tokens = len(req.output_token_ids)
        lp = {}
        if req.params.logprobs is not None:
            lp = dict(delta_logprobs=tuple(req.logprobs[start:]), cumulative_logprob=req.cumulative_logprob)
            if done:
                lp["logprobs"] = tuple(req.logprobs)
        if req.params.prompt_logprobs is not None and (start == 0 or done):
            lp["prompt_logprobs"] = tuple(req.prompt_logprobs)     # on the first output, and the final one
        if not done:
            return RequestOutput(req.request_id, delta, new_ids, req.num_prompt_tokens, len(req.output_token_ids),
                                 None, **lp)
        return RequestOutput(req.request_id, delta, new_ids, req.num_prompt_tokens, len(req.output_token_ids),
                             req.finish_reason, req.error, req.prompt, req.text, tuple(req.output_token_ids), **lp)

    def _take_seed(self) -> int:
        self._next_seed += 1
        return self._next_seed


def make_scheduler(rt: Runtime, kv, prefix_caching: bool = False, model_id: str = "") -> Scheduler:
    """The scheduler the policy table names, placing by the runtime's policies (or its planner)."""
    spec = rt.spec
    # Promotion and demotion are BlockCopys, which copy_blocks does only between plain (not u8) tiers.
    copies = not any(t.layout.quantized for t in rt.tiers.values())
    cache = dict(prefix_caching=prefix_caching, model_id=model_id, tier_copies=copies)
    if rt.scheduler == "neo":
        return NeoScheduler(kv, spec.max_num_seqs, spec.max_num_batched_tokens, rt.neo_costs, **cache)
    if rt.planner is not None:
        return Scheduler(kv, spec.max_num_seqs, spec.max_num_batched_tokens, planner=rt.planner, **cache)
    return Scheduler(kv, spec.max_num_seqs, spec.max_num_batched_tokens, rt.prefill_policy, rt.decode_policy,
                     **cache)


def _load_tokenizer(folder: Path) -> Tokenizer:
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"model folder {folder}: tokenizer.json not found")
    return Tokenizer.from_file(str(path))


def _generation_eos(folder: Path) -> set[int]:
    path = folder / "generation_config.json"
    if not path.is_file():
        return set()
    eos = json.loads(path.read_text()).get("eos_token_id")
    return set(eos) if isinstance(eos, list) else ({eos} if eos is not None else set())
