"""The schedulers' prefix caching over one or two KV tiers (a mixin of Scheduler; pure, no clocks).

- Naming: after each step, a request's newly full blocks are named by the hash chain of its tokens
  (kv/prefix_cache.py), on the tier they are on.
- Hits: a request being admitted to a tier starts its block table with that tier's longest named prefix
  of its tokens (shared, reference counted) and prefills only the rest. Its last token always runs,
  so the step still makes the logits of its first output token.
- Two levels (both tiers, plain KV on both): a request admitted to the device tier may first copy the
  host tier's continuation of its device hit down (promotion, a BlockCopy before the step) instead of
  computing it; whether to, or to place the request on the host tier and attend its host blocks where
  they are, is the cost model's choice (StepPlanner.place, NEO's promotion_pays). A named device block
  evicted for room is copied to a host block first (demotion), whenever the device blocks that make up
  one host block are all still readable this step; the host tier evicts least recently used to nothing.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..kv import BlockTables, CacheCounters, Tier, block_keys, extend_chain, root_hash
from .request import Request
from .step import BlockCopy

D, H = Tier.DEVICE, Tier.HOST


@dataclass(frozen=True)
class Hit:
    blocks: tuple[int, ...] = ()        # the admission tier's own cached prefix
    tokens: int = 0                     # the tokens they hold
    keep: int = 0                       # promotion: how many of blocks stay (the rest come from the host)
    promote: tuple[int, ...] = ()       # promotion: host blocks continuing the prefix, copied down
    promoted_tokens: int = 0            # the tokens cached with the promotion (kept + copied)


class PrefixCaching:
    kv: BlockTables
    prefix_caching: bool
    model_id: str
    tier_copies: bool                    # both tiers exist and take BlockCopys (no u8 tier)
    cache: CacheCounters

    def _init_cache(self, prefix_caching: bool, model_id: str, tier_copies: bool) -> None:
        self.prefix_caching = prefix_caching
        self.model_id = model_id                    # part of every prefix hash: no reuse across models
        two = D in self.kv.pools and H in self.kv.pools
        hbs, dbs = (self.kv.block_size_of(H), self.kv.block_size_of(D)) if two else (1, 1)
        self.tier_copies = prefix_caching and tier_copies and two and hbs % dbs == 0
        self.cache = CacheCounters()
        self._copies: list[BlockCopy] = []          # promotions and demotions for this step
        self._cache_notes: list[str] = []

    def _chain(self, req: Request, num_tokens: int) -> list[bytes]:
        return extend_chain(req.prefix_chain, root_hash(self.model_id, req.params.cache_salt), req.token_ids,
                            num_tokens, self.kv.chunk)

    def _hit(self, req: Request, tier: Tier) -> Hit:
        """The cached prefix req may start from on tier (none when caching is off or req asks for none),
        with, on the device tier, the host tier's continuation of it that promotion could copy down."""
        if not self.prefix_caching or req.skip_cache_hits or self.kv.has(req.request_id):
            return Hit()
        limit = req.num_tokens - 1      # the last token is never a hit
        chain = self._chain(req, limit)
        blocks = tuple(self.kv.prefix_hit(chain, tier, limit))
        tokens = len(blocks) * self.kv.block_size_of(tier)
        if tier != D or not self.tier_copies:
            return Hit(blocks, tokens)
        hbs = self.kv.block_size_of(H)
        start = tokens // hbs                       # the host block the device hit ends in
        src = self.kv.pool(H).lookup(block_keys(chain, hbs, self.kv.chunk)[start:limit // hbs])
        if (start + len(src)) * hbs <= tokens:
            return Hit(blocks, tokens)
        keep = start * hbs // self.kv.block_size_of(D)
        return Hit(blocks, tokens, keep, tuple(src), (start + len(src)) * hbs)

    def _admit(self, req: Request, tier: Tier, budget: int, reserve: int = 0, hit: Hit | None = None,
               promote: bool = False) -> int | None:
        """Blocks on tier for req's first chunk, starting from its cached prefix there (after promoting
        its host continuation when `promote`); returns the chunk's length, or None with nothing taken
        when tier has not got `reserve` blocks to spare beyond them."""
        hit = self._hit(req, tier) if hit is None else hit
        promote = promote and bool(hit.promote)
        shared = hit.blocks[:hit.keep] if promote else hit.blocks
        start = max(hit.promoted_tokens if promote else hit.tokens, req.num_computed_tokens)
        n = min(req.num_tokens - start, budget)
        need = self.kv.blocks_needed(req.request_id, start + n, tier) - len(shared)
        if self.kv.num_free(tier) - self.kv.pool(tier).cached_among(shared) - reserve < need:
            return None
        if shared:
            self.kv.share(req.request_id, list(shared), tier)
        if not self.kv.allocate_slots(req.request_id, start + n, tier):
            raise AssertionError(f"{tier.value}: {need} blocks were free for {req.request_id!r} and then were not")
        req.num_computed_tokens = start
        req.named_tier, req.num_named_blocks = tier, len(shared)
        if promote:
            per = self.kv.block_size_of(H) // self.kv.block_size_of(D)
            dst = self.kv.block_table(req.request_id)[len(shared):len(shared) + len(hit.promote) * per]
            self._copies.append(BlockCopy(req.request_id, H, hit.promote, D, tuple(dst)))
            self.cache.promotions += len(hit.promote)
            self._cache_notes.append(f"prefix cache: {req.request_id} promotes {len(hit.promote)} host blocks "
                                     f"({start - len(shared) * self.kv.block_size_of(D)} tokens) to the device")
        if self.prefix_caching:
            stats = self.cache.tier(tier.value)
            stats.queries += req.num_tokens
            stats.hits += start
            if tier == H and start and D in self.kv.pools:
                self.cache.host_placements += 1
                self._cache_notes.append(f"prefix cache: {req.request_id} attends {start} host-cached tokens "
                                         "in place (host tier)")
        return n

    def _name_blocks(self, req: Request) -> None:
        """Names req's newly full blocks so later requests can share them."""
        tier = self.kv.tier_of(req.request_id)
        if req.named_tier != tier:                  # moved tier: its blocks there are new
            req.named_tier, req.num_named_blocks = tier, 0
        n = req.num_computed_tokens
        if n // self.kv.block_size_of(tier) > req.num_named_blocks:      # a block filled up
            req.num_named_blocks = self.kv.cache_blocks(req.request_id, self._chain(req, n), n, req.num_named_blocks)

    def _with_cache_copies(self, moves: list[BlockCopy]) -> tuple[tuple[BlockCopy, ...], tuple[str, ...]]:
        """The step's copies in the order they must run, and the cache's notes: demotions first (they
        read evicted device blocks before anything is written to them), then the tier moves, then the
        promotions (which write fresh device blocks). Clears the pools' eviction records."""
        promotions = self._copies
        reads = {b for c in moves + promotions if c.src_tier == H for b in c.src_blocks}
        demotions = self._demote(reads)
        for pool in self.kv.pools.values():
            pool.evicted.clear()
        notes = tuple(self._cache_notes)
        self._copies, self._cache_notes = [], []
        return tuple(demotions + moves + promotions), notes

    def _demote(self, host_reads: set[int]) -> list[BlockCopy]:
        """Copies each group of named device blocks that makes one host block to the host tier when the
        last of them was evicted this step (their contents are intact until the step runs), into host
        blocks no later copy of the step reads."""
        dev = self.kv.pool(D) if D in self.kv.pools else None
        if not self.tier_copies or dev is None or not dev.evicted:
            return []
        host = self.kv.pool(H)
        per = host.block_size // dev.block_size
        gone = {key: (block, parent) for key, block, parent, _ in dev.evicted}
        out: list[BlockCopy] = []
        for key, block, parent, index in dev.evicted:
            if index % per != per - 1 or host.lookup([key]):
                continue
            group = [block]
            for _ in range(per - 1):                # walk back to the group's first block
                found = gone.get(parent) if parent is not None else None
                if found is None and parent is not None and dev.lookup([parent]):
                    b = dev.lookup([parent])[0]
                    found = (b, dev.meta_of(b)[0])
                if found is None:
                    break
                group.append(found[0])
                parent = found[1]
            if len(group) < per:
                continue
            dst = host.allocate(1, ("demote", key))
            if dst is None:                         # every host block is in use
                break
            if dst[0] in host_reads:                # a tier move or promotion reads it this step
                host.free(dst, ("demote", key))
                break
            host.register(dst[0], key, parent, index // per)
            host.free(dst, ("demote", key))
            out.append(BlockCopy("(demotion)", D, tuple(reversed(group)), H, tuple(dst)))
        if out:
            self.cache.demotions += len(out)
            self._cache_notes.append(f"prefix cache: {len(out)} evicted device block groups demoted to the host tier")
        return out
