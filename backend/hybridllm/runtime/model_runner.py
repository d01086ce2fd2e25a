"""ModelRunner: turns a scheduled step into tensors and runs the model over it (gpu_only)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..attention import AttentionMetadata, build_metadata
from ..models.llama import LlamaModel


@dataclass(frozen=True)
class StepInput:
    """One sequence's share of a step."""
    request_id: str
    token_ids: tuple[int, ...]      # the new tokens to run
    num_computed_tokens: int        # tokens already in the KV cache; the first new token's position
    block_table: tuple[int, ...]
    sample: bool                    # whether this chunk ends the known tokens, so a token is sampled
    attn: str = "device"            # NEO placement: "device", "device_to_host" (fresh prefill whose KV
                                    # goes to the host tier) or "host" (attention on the host tier)


@dataclass(frozen=True)
class StepTensors:
    input_ids: torch.Tensor         # [T] on the compute device
    positions: torch.Tensor         # [T] on the compute device
    md: AttentionMetadata           # on the device where attention runs
    sample_index: torch.Tensor      # [S] rows of the step whose logits are sampled


def prepare_step(seqs: list[StepInput], block_size: int, device: torch.device, attn_device: torch.device,
                 sliding_window: int | None) -> StepTensors:
    query_lens = [len(s.token_ids) for s in seqs]
    seq_lens = [s.num_computed_tokens + n for s, n in zip(seqs, query_lens)]
    ids = [t for s in seqs for t in s.token_ids]
    positions = [p for s, n in zip(seqs, seq_lens) for p in range(s.num_computed_tokens, n)]
    md = build_metadata(query_lens, seq_lens, [list(s.block_table) for s in seqs], block_size, attn_device,
                        sliding_window)
    last = [md.query_start_loc[j + 1] - 1 for j, s in enumerate(seqs) if s.sample]
    return StepTensors(torch.tensor(ids, dtype=torch.int64, device=device),
                       torch.tensor(positions, dtype=torch.int64, device=device), md,
                       torch.tensor(last, dtype=torch.int64, device=device))


class ModelRunner:
    """Weights, attention and KV all on the compute device."""

    def __init__(self, model: LlamaModel, attention, block_size: int):
        self.model = model
        self.attention = attention
        self.block_size = block_size
        self.device = model.device

    @torch.inference_mode()
    def execute(self, seqs: list[StepInput]) -> torch.Tensor:
        """Runs the step; returns logits [num sampled seqs, vocab] in the order of `seqs`."""
        model = self.model
        st = prepare_step(seqs, self.block_size, self.device, self.device, model.cfg.sliding_window)
        h = model.embed(st.input_ids)                                              # [T, hidden]
        for i in range(model.cfg.num_hidden_layers):
            q, k, v = model.attn_inputs(i, h, st.positions)
            o = self.attention.forward(i, q, k, v, st.md)                           # [T, H * D]
            h = model.attn_finish(i, h, o)
        return model.logits(h[st.sample_index])                                    # [S, vocab]
