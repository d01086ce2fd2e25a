"""AttentionMetadata: everything a backend needs to place and read one step's tokens.

Built once per step by the runner and shared by every layer.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from ..utils import ceil_div


@dataclass(frozen=True)
class SeqSlice:
    """One sequence of the step: its new tokens are q[q_start:q_end]."""
    q_start: int
    q_end: int
    seq_len: int                    # context length after this step (num_computed_tokens + query len)
    block_table: torch.Tensor       # [num_blocks_of_seq] int64


@dataclass(frozen=True)
class AttentionMetadata:
    num_tokens: int
    slot_mapping: torch.Tensor          # [num_tokens] int64
    slot_block: torch.Tensor            # [num_tokens] slot_mapping // block_size
    slot_offset: torch.Tensor           # [num_tokens] slot_mapping % block_size
    query_start_loc: tuple[int, ...]    # [num_seqs + 1]
    seq_lens: tuple[int, ...]           # [num_seqs]
    prefills: tuple[SeqSlice, ...]      # sequences with more than one new token
    decode_token_index: torch.Tensor    # [num_decodes] position of each decode token in the step
    decode_block_tables: torch.Tensor   # [num_decodes, max_blocks] int64, padded with block 0
    decode_seq_lens: tuple[int, ...]    # [num_decodes]
    block_size: int
    sliding_window: int | None = None

    @property
    def num_decodes(self) -> int:
        return int(self.decode_token_index.numel())

    @functools.cached_property
    def decode_context_lens(self) -> torch.Tensor:
        """[num_decodes] int32 on the tables' device: what a paged kernel reads beside decode_block_tables.
        Made on first use (once per step, shared by the layers)."""
        return torch.tensor(self.decode_seq_lens, dtype=torch.int32).to(self.decode_block_tables.device)


def build_metadata(query_lens: list[int], seq_lens: list[int], block_tables: list[list[int]],
                   block_size: int, device: torch.device, sliding_window: int | None = None
                   ) -> AttentionMetadata:
    """query_lens[i] new tokens of sequence i end its context of seq_lens[i] tokens."""
    starts = [0]
    slots: list[int] = []
    prefills, dec_idx, dec_tables, dec_lens = [], [], [], []
    for qlen, slen, table in zip(query_lens, seq_lens, block_tables):
        if qlen < 1 or slen < qlen or len(table) * block_size < slen:
            raise ValueError(f"bad step shape: query_len={qlen} seq_len={slen} blocks={len(table)}")
        q0 = starts[-1]
        starts.append(q0 + qlen)
        for p in range(slen - qlen, slen):
            slots.append(table[p // block_size] * block_size + p % block_size)
        if qlen == 1:
            dec_idx.append(q0)
            dec_tables.append(table)
            dec_lens.append(slen)
        else:
            bt = torch.tensor(table[:ceil_div(slen, block_size)], dtype=torch.int64, device=device)
            prefills.append(SeqSlice(q0, q0 + qlen, slen, bt))
    slot_mapping = torch.tensor(slots, dtype=torch.int64, device=device)
    nbs = [ceil_div(n, block_size) for n in dec_lens]
    max_blocks = max(nbs, default=0)
    # One tensor from padded rows: a tensor per row costs more than the rows themselves.
    tables = torch.tensor([list(t[:nb]) + [0] * (max_blocks - nb) for t, nb in zip(dec_tables, nbs)],
                          dtype=torch.int64).view(len(dec_tables), max_blocks)
    return AttentionMetadata(
        num_tokens=starts[-1],
        slot_mapping=slot_mapping,
        slot_block=slot_mapping // block_size,
        slot_offset=slot_mapping % block_size,
        query_start_loc=tuple(starts),
        seq_lens=tuple(seq_lens),
        prefills=tuple(prefills),
        decode_token_index=torch.tensor(dec_idx, dtype=torch.int64, device=device),
        decode_block_tables=tables.to(device),
        decode_seq_lens=tuple(dec_lens),
        block_size=block_size,
        sliding_window=sliding_window,
    )
