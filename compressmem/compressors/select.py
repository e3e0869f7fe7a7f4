"""Training-free compression: keep the KV entries a query-agnostic importance score ranks highest."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Compressor

_QUERY_TILE = 512
_WINDOW = 64
_POOL = 7


class SelectCompressor(Compressor):
    """Keeps `1/ratio` of each chunk's KV entries per layer and KV head, chosen by `score_name`:

    - `observed` (H2O-like): mean attention an entry receives from the later tokens of its chunk;
    - `window` (SnapKV-like, without the question): attention from the chunk's last 64 tokens,
      max-pooled over neighbours so that whole phrases survive;
    - `keynorm`: low key norm (no attention needed; cheapest).
    """

    name = "select"

    def __init__(self, ratio: float, score_name: str) -> None:
        super().__init__(ratio)
        self.score_name = score_name

    def score(self, query: torch.Tensor, key: torch.Tensor, prefix_len: int) -> torch.Tensor:
        if self.score_name == "keynorm":
            return -key[:, :, prefix_len:].float().norm(dim=-1)
        if self.score_name == "window":
            return _window_attention(query, key, prefix_len)
        return _observed_attention(query, key, prefix_len)


def _grouped(query: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """[B, H, q, d] -> [B, kv_heads, H // kv_heads, q, d] so each group shares one KV head."""
    batch, heads, length, dim = query.shape
    return query.view(batch, kv_heads, heads // kv_heads, length, dim)


def _attention_to_chunk(query: torch.Tensor, key: torch.Tensor, first: int, last: int, prefix_len: int) -> torch.Tensor:
    """Causal attention probabilities of queries `first..last-1` over all keys, summed over each
    query-head group and over the queries, restricted to chunk keys: `[B, kv_heads, n]`."""
    grouped = _grouped(query[:, :, first:last].float(), key.shape[1])
    logits = torch.einsum("bkgqd,bknd->bkgqn", grouped, key.float()) * key.shape[-1] ** -0.5
    rows = torch.arange(first, last, device=key.device).view(-1, 1)
    cols = torch.arange(key.shape[2], device=key.device).view(1, -1)
    logits = logits.masked_fill(cols > rows, float("-inf"))
    return logits.softmax(dim=-1)[..., prefix_len:].sum(dim=(2, 3))


def _observed_attention(query: torch.Tensor, key: torch.Tensor, prefix_len: int) -> torch.Tensor:
    total_len = key.shape[2]
    received = torch.zeros(key.shape[0], key.shape[1], total_len - prefix_len, device=key.device)
    for first in range(prefix_len, total_len, _QUERY_TILE):
        received += _attention_to_chunk(query, key, first, min(first + _QUERY_TILE, total_len), prefix_len)
    observers = torch.arange(total_len - prefix_len, 0, -1, device=key.device, dtype=received.dtype)
    return received / observers


def _window_attention(query: torch.Tensor, key: torch.Tensor, prefix_len: int) -> torch.Tensor:
    total_len = key.shape[2]
    first = max(prefix_len, total_len - _WINDOW)
    received = _attention_to_chunk(query, key, first, total_len, prefix_len)
    pooled = F.max_pool1d(received, kernel_size=_POOL, stride=1, padding=_POOL // 2)
    pooled[..., first - prefix_len :] = float("inf")
    return pooled
