"""ModelRunner: turns a scheduled step into tensors and runs the model over it."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..attention import DeviceAttention, build_metadata
from ..models.llama import LlamaModel


@dataclass(frozen=True)
class StepInput:
    """One sequence's share of a step."""
    request_id: str
    token_ids: tuple[int, ...]      # the new tokens to run
    num_computed_tokens: int        # tokens already in the KV cache; the first new token's position
    block_table: tuple[int, ...]
    sample: bool                    # whether this chunk ends the known tokens, so a token is sampled


class ModelRunner:
    def __init__(self, model: LlamaModel, attention: DeviceAttention, block_size: int):
        self.model = model
        self.attention = attention
        self.block_size = block_size
        self.device = model.device

    @torch.inference_mode()
    def execute(self, seqs: list[StepInput]) -> torch.Tensor:
        """Runs the step; returns logits [num sampled seqs, vocab] in the order of `seqs`."""
        query_lens = [len(s.token_ids) for s in seqs]
        seq_lens = [s.num_computed_tokens + n for s, n in zip(seqs, query_lens)]
        ids = [t for s in seqs for t in s.token_ids]
        positions = [p for s, n in zip(seqs, seq_lens) for p in range(s.num_computed_tokens, n)]
        md = build_metadata(query_lens, seq_lens, [list(s.block_table) for s in seqs],
                            self.block_size, self.device, self.model.cfg.sliding_window)
        input_ids = torch.tensor(ids, dtype=torch.int64, device=self.device)       # [T]
        pos = torch.tensor(positions, dtype=torch.int64, device=self.device)       # [T]
        model = self.model
        h = model.embed(input_ids)                                                  # [T, hidden]
        for i in range(model.cfg.num_hidden_layers):
            q, k, v = model.attn_inputs(i, h, pos)
            o = self.attention.forward(i, q, k, v, md)                              # [T, H * D]
            h = model.attn_finish(i, h, o)
        last = [md.query_start_loc[j + 1] - 1 for j, s in enumerate(seqs) if s.sample]
        if not last:
            return torch.empty((0, model.cfg.vocab_size), device=self.device)
        return model.logits(h[torch.tensor(last, device=self.device)])            # [S, vocab]
