"""What the scheduler hands the engine each step: frozen records, no tensors."""
from __future__ import annotations

from dataclasses import dataclass

from ..kv import Tier
from ..policy.neo import HostBatchChoice


@dataclass(frozen=True)
class StepInput:
    """One sequence's share of a step."""
    request_id: str
    token_ids: tuple[int, ...]      # the new tokens to run
    num_computed_tokens: int        # tokens already in the KV cache; the first new token's position
    block_table: list[int]          # the KV manager's table itself (no copy): read it, never change it
    sample: bool                    # whether this chunk ends the known tokens, so a token is sampled
    attn: str = "device"            # NEO placement: "device", "device_to_host" (fresh prefill whose KV
                                    # goes to the host tier) or "host" (attention on the host tier)

    @property
    def is_decode(self) -> bool:
        return len(self.token_ids) == 1 and self.num_computed_tokens > 0 and self.sample


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
    scheduled: tuple[StepInput, ...]
    preempted: tuple[str, ...]
    copies: tuple[BlockCopy, ...] = ()
    host_choice: HostBatchChoice | None = None   # NEO's host sub-batch decision, for the debug log and trace

    @property
    def empty(self) -> bool:
        return not self.scheduled
