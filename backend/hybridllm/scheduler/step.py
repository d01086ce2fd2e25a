"""What the scheduler hands the runtime each step: frozen records, no tensors.

The scheduler owns placement: each StepInput sits in one SubBatch, which says which tier its KV is
on, which policy's executor runs it and, under NEO, whether it is in sub-batch A (attention on the
device) or B (attention on the host).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..kv import Tier
from ..policy.neo import HostBatchChoice


def is_decode(num_new_tokens: int, num_computed_tokens: int, num_tokens: int) -> bool:
    """A decode runs the one token after everything already cached: not a prompt's first chunk, and
    the last known token (so a new one is sampled). The one definition every layer uses."""
    return num_new_tokens == 1 and num_computed_tokens > 0 and num_computed_tokens + 1 == num_tokens


@dataclass(frozen=True)
class StepInput:
    """One sequence's share of a step."""
    request_id: str
    token_ids: tuple[int, ...]      # the new tokens to run
    num_computed_tokens: int        # tokens already in the KV cache; the first new token's position
    block_table: list[int]          # the block tables' list itself (no copy): read it, never change it
    sample: bool                    # whether this chunk ends the known tokens, so a token is sampled
    # Prompt logprobs: the logits of this chunk's first rows, which predict prompt tokens (the last
    # prompt position is the sampled row, never counted here). 0 for every request that does not ask.
    num_prompt_logits: int = 0

    @property
    def is_decode(self) -> bool:
        n = len(self.token_ids)
        return self.sample and is_decode(n, self.num_computed_tokens, self.num_computed_tokens + n)


NEO_PARTS = ("", "A", "B")


@dataclass(frozen=True)
class SubBatch:
    """Sequences one executor runs together this step, their KV all on one tier."""
    policy: str                     # whose executor runs it (the policy table's name)
    tier: Tier                      # where these sequences' KV lives
    seqs: tuple[StepInput, ...]
    part: str = ""                  # NEO: "A" (attention on the device; a host-tier A is a fresh prefill
                                    # whose K/V is written to the host as each layer ends) or "B" (host attention)

    def __post_init__(self):
        if self.part not in NEO_PARTS:
            raise ValueError(f"SubBatch.part: {self.part!r} is not one of {NEO_PARTS}")


@dataclass(frozen=True)
class BlockCopy:
    """K/V to copy between tiers before the step runs (a request changing tier)."""
    request_id: str
    src_tier: Tier
    src_blocks: tuple[int, ...]
    dst_tier: Tier
    dst_blocks: tuple[int, ...]


@dataclass(frozen=True)
class SchedulerOutput:
    scheduled: tuple[StepInput, ...]             # every sequence of the step, in scheduling order
    preempted: tuple[str, ...]
    copies: tuple[BlockCopy, ...] = ()
    batches: tuple[SubBatch, ...] = ()           # the same sequences, placed
    host_choice: HostBatchChoice | None = None   # NEO's host sub-batch decision, for the debug log and trace
    notes: tuple[str, ...] = ()                  # the per-step planner's reasons, for the debug log and trace

    @property
    def empty(self) -> bool:
        return not self.scheduled

    def by_policy(self) -> dict[str, tuple[SubBatch, ...]]:
        """The sub-batches grouped by the executor that runs them, in order of first appearance."""
        out: dict[str, list[SubBatch]] = {}
        for b in self.batches:
            out.setdefault(b.policy, []).append(b)
        return {p: tuple(bs) for p, bs in out.items()}
