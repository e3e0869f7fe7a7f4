"""Pure-torch reference of `compressmem::gate_scores`: the contract every implementation meets.

Each block is cut into pieces of at most `_PIECE` keys, so that a log-sum-exp over a piece is a
dense, padded reduction; the pieces are processed in chunks of a size fixed by the shapes, so memory
stays bounded for a bank of any size, and each chunk's piece results are merged online into running
per-block maxima and sums. There is no `.item()`, `.tolist()` or branching on tensor values, so
`torch.compile` traces it whole.
"""

from __future__ import annotations

import torch

from ..quantize import TOKENS, Quantized

_PIECE = 16  # keys per piece: padding costs at most _PIECE - 1 keys per block
_LOGITS_PER_CHUNK = 1 << 24  # 64 MiB of fp32 logits per chunk of pieces
_FLOOR = torch.finfo(torch.float32).min  # a finite "-inf": padded keys and empty slots stay NaN-free


def gate_scores_reference(
    queries: torch.Tensor,
    keys: torch.Tensor,
    block_offsets: torch.Tensor,
    query_weights: torch.Tensor,
    scale: float,
    pool: str,
) -> torch.Tensor:
    """Pooled log-sum-exp attention of every query head on every block, `[blocks, layers, heads]` fp32.

    Args:
        queries: `[layers, heads, q, d]` fp32/bf16/fp16.
        keys: `[layers, kv_heads, total, d]`, all blocks' keys concatenated; query head `h` reads KV
            head `h // (heads // kv_heads)`.
        block_offsets: `[blocks + 1]` int64, strictly increasing from 0 to `total`; block `b` owns
            keys `offsets[b]:offsets[b + 1]`.
        query_weights: `[q]` fp32, non-negative, not all zero.
        scale: logit scale.
        pool: `"mean"` (weighted mean over queries) or `"max"` (max over queries of positive weight).
    """
    if pool not in ("mean", "max"):
        raise ValueError(f"pool must be 'mean' or 'max', got {pool!r}.")
    layers, heads, num_queries, dim = queries.shape
    kv_heads, total = keys.shape[1], keys.shape[2]
    num_blocks = block_offsets.shape[0] - 1
    group = heads // kv_heads
    grouped = queries.float().reshape(layers, kv_heads, group, num_queries, dim) * scale
    starts, lengths, owners = _pieces(block_offsets, total)
    lanes = torch.arange(_PIECE, device=keys.device)
    per_chunk = max(1, _LOGITS_PER_CHUNK // (layers * heads * num_queries * _PIECE))
    # Running log-sum-exp per block as (max, sum of exp(logit - max)); slot `blocks` takes empty pieces.
    shape = (layers, kv_heads, group, num_queries, num_blocks + 1)
    maxes = torch.full(shape, _FLOOR, device=queries.device)
    sums = torch.zeros(shape, device=queries.device)
    for first in range(0, starts.shape[0], per_chunk):
        chunk = slice(first, first + per_chunk)
        index = (starts[chunk, None] + lanes).clamp(max=max(total - 1, 0))  # [pieces, _PIECE]
        logits = torch.einsum("lkgqd,lkpnd->lkgqpn", grouped, keys[:, :, index].float())
        logits.masked_fill_(lanes >= lengths[chunk, None], _FLOOR)
        piece_max = logits.amax(dim=-1)
        piece_sum = logits.sub_(piece_max.unsqueeze(-1)).exp_().sum(dim=-1)  # [L, kvH, G, q, pieces]
        owner = owners[chunk].expand_as(piece_max)
        old_max = maxes.gather(-1, owner)
        maxes.scatter_reduce_(-1, owner, piece_max, "amax")
        new_max = maxes.gather(-1, owner)
        # Pieces of one block write the same rescaled sum, then each adds its own share.
        sums.scatter_(-1, owner, sums.gather(-1, owner) * (old_max - new_max).exp())
        sums.scatter_add_(-1, owner, piece_sum * (piece_max - new_max).exp())
    lse = maxes[..., :num_blocks] + sums[..., :num_blocks].log()  # [L, kvH, G, q, blocks]
    weights = query_weights.float().to(lse.device)
    if pool == "mean":
        pooled = torch.einsum("lkgqb,q->lkgb", lse, weights / weights.sum())
    else:
        pooled = lse.masked_fill((weights <= 0).view(-1, 1), float("-inf")).amax(dim=3)
    return pooled.reshape(layers, heads, num_blocks).permute(2, 0, 1).contiguous()


def gate_scores_packed_reference(
    queries: torch.Tensor,
    codes: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    bits: int,
    group: int,
    block_offsets: torch.Tensor,
    query_weights: torch.Tensor,
    scale: float,
    pool: str,
) -> torch.Tensor:
    """`gate_scores_reference` on keys stored packed (`compressmem.quantize`, groups of `group` keys per channel):
    the keys are dequantised to float32, then scored."""
    keys = Quantized(codes, scales, zeros, bits, group, TOKENS).dequantize()
    return gate_scores_reference(queries.float(), keys, block_offsets, query_weights, scale, pool)


def _pieces(offsets: torch.Tensor, total: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """First key, key count and owning block of each piece, over a static upper bound of pieces.

    Block `b` of `n` keys gets `ceil(n / _PIECE)` pieces; the bound `(total + blocks * (_PIECE - 1))
    // _PIECE` holds whatever the lengths, and the pieces past the used ones are empty and owned by
    the spare slot `blocks`.
    """
    num_blocks = offsets.shape[0] - 1
    bound = (total + num_blocks * (_PIECE - 1)) // _PIECE
    counts = (offsets[1:] - offsets[:-1] + _PIECE - 1) // _PIECE
    ends = counts.cumsum(0)
    piece = torch.arange(bound, device=offsets.device)
    owners = torch.searchsorted(ends, piece, right=True)  # == num_blocks past the used pieces
    block = owners.clamp(max=max(num_blocks - 1, 0))
    starts = offsets[block] + (piece - ends[block] + counts[block]) * _PIECE
    lengths = torch.where(owners < num_blocks, (offsets[block + 1] - starts).clamp(0, _PIECE), 0)
    return starts, lengths, owners
