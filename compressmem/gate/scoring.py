"""`gate_scores`: how strongly a prompt's queries attend to each memory block (DESIGN §3.3).

This is the torch reference of the op the fused kernel implements: per block, layer and query
head, a log-sum-exp of scaled dot products over the block's keys, averaged over the prompt's
tokens. Blocks are packed in one key tensor with offsets, so ragged blocks cost no padding in the
caller, and grouped-query attention (fewer KV heads than query heads) is handled here.
"""

from __future__ import annotations

import torch

_LOGITS_PER_TILE = 1 << 25


def gate_scores(queries: torch.Tensor, keys: torch.Tensor, block_offsets: torch.Tensor,
                query_mask: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor:
    """Pooled log-sum-exp attention of every query head on every block.

    Args:
        queries: `[layers, heads, q, d]` post-RoPE queries of the gate prompt.
        keys: `[layers, kv_heads, total, d]` post-RoPE keys of all blocks, concatenated.
        block_offsets: `[blocks + 1]` int64, block `b` owns keys `offsets[b]:offsets[b+1]` (non-empty).
        query_mask: `[q]` bool, the prompt tokens to pool over (all when None).
        scale: logit scale, `d ** -0.5` when None.

    Returns:
        `[blocks, layers, heads]` float32 scores.
    """
    layers, heads, num_queries, dim = queries.shape
    kv_heads = keys.shape[1]
    if heads % kv_heads:
        raise ValueError(f"query heads ({heads}) must be a multiple of KV heads ({kv_heads}).")
    scale = dim ** -0.5 if scale is None else scale
    weights = torch.ones(num_queries, device=queries.device) if query_mask is None else query_mask.float()
    weights = weights / weights.sum().clamp(min=1)
    grouped = queries.float().view(layers, kv_heads, heads // kv_heads, num_queries, dim)
    lengths = (block_offsets[1:] - block_offsets[:-1]).tolist()
    keys_per_tile = max(1, _LOGITS_PER_TILE // (layers * heads * num_queries))
    scores, start = [], 0
    while start < len(lengths):
        stop, span = start, 0
        while stop < len(lengths) and (span == 0 or span + lengths[stop] <= keys_per_tile):
            span += lengths[stop]
            stop += 1
        scores.append(_tile_scores(grouped, keys, block_offsets, lengths, start, stop, scale, weights))
        start = stop
    return torch.cat(scores).view(len(lengths), layers, heads)


def _tile_scores(grouped: torch.Tensor, keys: torch.Tensor, offsets: torch.Tensor, lengths: list[int],
                 start: int, stop: int, scale: float, weights: torch.Tensor) -> torch.Tensor:
    """Scores of blocks `start..stop-1`, padding them to the longest one with -inf logits."""
    widest = max(lengths[start:stop])
    first = int(offsets[start])
    tile = keys[:, :, first:int(offsets[stop])].float()
    local = torch.arange(widest, device=keys.device)
    block_starts = (offsets[start:stop] - first).to(keys.device)
    index = (block_starts.view(-1, 1) + local.view(1, -1)).clamp(max=tile.shape[2] - 1)
    valid = local.view(1, -1) < torch.tensor(lengths[start:stop], device=keys.device).view(-1, 1)
    padded = tile[:, :, index]  # [L, kvH, blocks, widest, d]
    logits = torch.einsum("lkgqd,lkbnd->lkgqbn", grouped, padded) * scale
    logits = logits.masked_fill(~valid, float("-inf"))
    pooled = torch.einsum("lkgqb,q->lkgb", logits.logsumexp(dim=-1), weights)
    return pooled.flatten(1, 2).permute(2, 0, 1)
