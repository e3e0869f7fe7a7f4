"""`compressmem::gate_scores` and `compressmem::gate_scores_packed`, torch custom ops, and `gate_scores`, their
validating Python entry point (float keys, or keys quantized by `compressmem.quantize`).

The ops dispatch to the Triton kernel on CUDA (when Triton imports) and to the torch reference
elsewhere; their fake implementations give `torch.compile` the output shape without running either.
Checks that read tensor values (offsets increasing, weights non-negative) live in the eager
wrapper, so the op itself stays traceable.
"""

from __future__ import annotations

import torch

from ..quantize import TOKENS, Quantized
from .reference import gate_scores_packed_reference, gate_scores_reference
from .triton_gate import gate_scores_triton, triton_available

POOLS = ("mean", "max")
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@torch.library.custom_op("compressmem::gate_scores", mutates_args=())
def gate_scores_op(
    queries: torch.Tensor,
    keys: torch.Tensor,
    block_offsets: torch.Tensor,
    query_weights: torch.Tensor,
    scale: float,
    pool: str,
) -> torch.Tensor:
    """Pooled log-sum-exp of every query head over every block's keys, `[blocks, layers, heads]` fp32."""
    return gate_scores_reference(queries, keys, block_offsets, query_weights, scale, pool)


@gate_scores_op.register_kernel("cuda")
def _gate_scores_cuda(
    queries: torch.Tensor,
    keys: torch.Tensor,
    block_offsets: torch.Tensor,
    query_weights: torch.Tensor,
    scale: float,
    pool: str,
) -> torch.Tensor:
    implementation = gate_scores_triton if triton_available() else gate_scores_reference
    return implementation(queries, keys, block_offsets, query_weights, scale, pool)


@gate_scores_op.register_fake
def _gate_scores_fake(
    queries: torch.Tensor,
    keys: torch.Tensor,
    block_offsets: torch.Tensor,
    query_weights: torch.Tensor,
    scale: float,
    pool: str,
) -> torch.Tensor:
    return queries.new_empty((block_offsets.shape[0] - 1, queries.shape[0], queries.shape[1]), dtype=torch.float32)


@torch.library.custom_op("compressmem::gate_scores_packed", mutates_args=())
def gate_scores_packed_op(
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
    """`compressmem::gate_scores` on packed keys: `codes` uint8 `[layers, kv_heads, total, d * bits / 8]`, `scales`
    and `zeros` float16 `[layers, kv_heads, ceil(total / group), d]`."""
    return gate_scores_packed_reference(
        queries, codes, scales, zeros, bits, group, block_offsets, query_weights, scale, pool
    )


@gate_scores_packed_op.register_kernel("cuda")
def _gate_scores_packed_cuda(
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
    if not triton_available():
        return gate_scores_packed_reference(
            queries, codes, scales, zeros, bits, group, block_offsets, query_weights, scale, pool
        )
    return gate_scores_triton(queries, codes, block_offsets, query_weights, scale, pool, scales, zeros, bits, group)


@gate_scores_packed_op.register_fake
def _gate_scores_packed_fake(
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
    return queries.new_empty((block_offsets.shape[0] - 1, queries.shape[0], queries.shape[1]), dtype=torch.float32)


def gate_scores(
    queries: torch.Tensor,
    keys: torch.Tensor | Quantized,
    block_offsets: torch.Tensor,
    query_weights: torch.Tensor | None = None,
    scale: float | None = None,
    pool: str = "mean",
) -> torch.Tensor:
    """How strongly a prompt's queries attend to each memory block, `[blocks, layers, heads]` fp32.

    For block `b`, layer `l` and query head `h`: the log-sum-exp over the block's keys of
    `scale * <query, key>` for each prompt token, pooled over tokens by weighted mean (`pool="mean"`)
    or by max over the tokens of positive weight (`pool="max"`).

    Args:
        queries: `[layers, heads, q, d]` post-RoPE queries of the gate prompt, fp32/bf16/fp16.
        keys: `[layers, kv_heads, total, d]` all blocks' keys concatenated, same dtype and device;
            `heads` must be a multiple of `kv_heads` (grouped-query attention, as `repeat_kv`). Or the
            same keys `Quantized` per channel in groups along keys (`quantize(keys, bits, group, TOKENS)`):
            the kernel then reads the packed codes and unpacks them in registers.
        block_offsets: `[blocks + 1]` int64 on the keys' device, strictly increasing from 0 to
            `total`; block `b` owns keys `offsets[b]:offsets[b + 1]`.
        query_weights: `[q]` non-negative token weights, not all zero; all ones when None.
        scale: logit scale, `d ** -0.5` when None.
        pool: `"mean"` or `"max"`.
    """
    if query_weights is None:
        query_weights = torch.ones(queries.shape[-2], device=queries.device)
    if isinstance(keys, Quantized) and keys.axis != TOKENS:
        raise ValueError("packed gate keys must be grouped along keys, per channel (quantize(..., TOKENS)).")
    _check(queries, keys, block_offsets, query_weights, pool)
    if not torch.compiler.is_compiling():
        _check_values(keys, block_offsets, query_weights)
    scale = queries.shape[-1] ** -0.5 if scale is None else float(scale)
    if isinstance(keys, Quantized):
        return gate_scores_packed_op(
            queries,
            keys.data,
            keys.scales,
            keys.zeros,
            keys.bits,
            keys.group,
            block_offsets,
            query_weights.float(),
            scale,
            pool,
        )
    return gate_scores_op(queries, keys, block_offsets, query_weights.float(), scale, pool)


def _check(
    queries: torch.Tensor, keys: torch.Tensor | Quantized, offsets: torch.Tensor, weights: torch.Tensor, pool: str
) -> None:
    """Shapes, dtypes, devices and `pool`: checks that need no tensor values, so they trace."""
    if queries.dim() != 4 or len(keys.shape) != 4:
        raise ValueError(
            f"queries must be [layers, heads, q, d] and keys [layers, kv_heads, total, d]; got shapes "
            f"{tuple(queries.shape)} and {tuple(keys.shape)}."
        )
    layers, heads, num_queries, dim = queries.shape
    if keys.shape[0] != layers or keys.shape[3] != dim:
        raise ValueError(
            f"queries {tuple(queries.shape)} and keys {tuple(keys.shape)} must agree on layers (dim 0) "
            "and head_dim (dim 3): pass the keys of the same gate layers as the queries."
        )
    if keys.shape[1] == 0 or heads % keys.shape[1]:
        raise ValueError(f"query heads ({heads}) must be a multiple of KV heads ({keys.shape[1]}).")
    if num_queries == 0:
        raise ValueError("queries hold no prompt token (q = 0): pass at least one query.")
    key_dtype = queries.dtype if isinstance(keys, Quantized) else keys.dtype  # packed keys read as float32
    if queries.dtype not in DTYPES or key_dtype != queries.dtype:
        raise TypeError(
            f"queries and keys must share one dtype among float32, bfloat16 and float16; got "
            f"{queries.dtype} and {key_dtype}. Cast one to the other's dtype."
        )
    if offsets.dtype != torch.int64 or offsets.dim() != 1 or offsets.numel() == 0:
        raise ValueError(
            f"block_offsets must be a 1-D int64 tensor [blocks + 1]; got {offsets.dtype} of shape "
            f"{tuple(offsets.shape)}."
        )
    if (
        weights.dim() != 1
        or weights.shape[0] != num_queries
        or not (weights.is_floating_point() or weights.dtype == torch.bool)
    ):
        raise ValueError(
            f"query_weights must be a float (or bool) [q] = [{num_queries}] tensor; got {weights.dtype} "
            f"of shape {tuple(weights.shape)}."
        )
    devices = {t.device for t in (queries, keys, offsets, weights)}
    if len(devices) > 1:
        raise ValueError(
            f"queries ({queries.device}), keys ({keys.device}), block_offsets ({offsets.device}) and "
            f"query_weights ({weights.device}) must be on one device; move them with .to(device)."
        )
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}.")


def _check_values(keys: torch.Tensor | Quantized, offsets: torch.Tensor, weights: torch.Tensor) -> None:
    """Offsets and weights by value (eager only: these read tensors)."""
    first, last = int(offsets[0]), int(offsets[-1])
    if first != 0 or last != keys.shape[2]:
        raise ValueError(
            f"block_offsets must start at 0 and end at the number of keys ({keys.shape[2]}); got {first} ... {last}."
        )
    if offsets.numel() > 1 and not bool((offsets[1:] > offsets[:-1]).all()):
        raise ValueError("block_offsets must be strictly increasing: every block needs at least one key.")
    if bool((weights < 0).any()) or not bool((weights > 0).any()):
        raise ValueError("query_weights must be non-negative with at least one positive weight.")
