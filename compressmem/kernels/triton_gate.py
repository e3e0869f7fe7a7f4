"""The fused Triton kernel of `compressmem::gate_scores` and its launcher.

One program per (block, layer, query head) scans the block's keys tile by tile against one tile of
queries at a time, keeping an online log-sum-exp per query (running max and sum), so the
prompt-by-bank score matrix never exists in memory; it then pools over the queries and stores one
fp32 scalar. Programs of query heads that share a KV head are adjacent in the launch order, so a
block's keys are read from DRAM once and then from L2. Keys stored packed (8, 4 or 2 bits, with a
float16 scale and zero point per channel and group of keys: `compressmem.quantize`) are unpacked in
registers, so the bank's key bytes are read at a quarter or an eighth of the float16 traffic.
Triton is optional (`compressmem[kernels]`).
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None

_LOG2E = 1.4426950408889634


def triton_available() -> bool:
    """Whether Triton imports, so that `gate_scores_triton` can run."""
    return triton is not None


if triton is not None:
    _LN2 = tl.constexpr(0.6931471805599453)  # jit code may read only constexpr globals

    @triton.jit
    def _gate_scores_kernel(
        queries,
        keys,
        key_scales,
        key_zeros,
        offsets,
        weights,
        out,
        num_queries,
        dim,
        heads,
        group,
        layer_heads,
        q_layer,
        q_head,
        q_pos,
        q_dim,
        k_layer,
        k_head,
        k_pos,
        k_dim,
        s_layer,
        s_head,
        s_pos,
        s_dim,
        scale_log2,
        MAX_POOL: tl.constexpr,
        UPCAST: tl.constexpr,
        BITS: tl.constexpr,
        KEY_GROUP: tl.constexpr,
        BLOCK_Q: tl.constexpr,
        BLOCK_K: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        program = tl.program_id(0)
        block = program // layer_heads
        layer_head = program % layer_heads  # fastest: heads of one KV head are neighbours
        layer = layer_head // heads
        head = layer_head % heads
        start = tl.load(offsets + block)
        end = tl.load(offsets + block + 1)
        q_base = queries + layer.to(tl.int64) * q_layer + head.to(tl.int64) * q_head
        k_base = keys + layer.to(tl.int64) * k_layer + (head // group).to(tl.int64) * k_head
        s_offset = layer.to(tl.int64) * s_layer + (head // group).to(tl.int64) * s_head
        d = tl.arange(0, BLOCK_D)
        d_ok = d < dim
        pooled = tl.zeros([BLOCK_Q], dtype=tl.float32)
        if MAX_POOL:
            pooled = tl.full([BLOCK_Q], float("-inf"), dtype=tl.float32)
        for q_start in range(0, num_queries, BLOCK_Q):
            q = q_start + tl.arange(0, BLOCK_Q)
            q_ok = q < num_queries
            q_tile = tl.load(
                q_base + q[:, None].to(tl.int64) * q_pos + d[None, :] * q_dim,
                mask=q_ok[:, None] & d_ok[None, :],
                other=0.0,
            )
            if UPCAST or BITS != 16:
                q_tile = q_tile.to(tl.float32)  # unpacked keys are float32
            run_max = tl.full([BLOCK_Q], float("-inf"), dtype=tl.float32)  # in log2 units
            run_sum = tl.zeros([BLOCK_Q], dtype=tl.float32)
            for k_start in range(start, end, BLOCK_K):
                k = k_start + tl.arange(0, BLOCK_K)
                k_ok = k < end
                k_mask = d_ok[:, None] & k_ok[None, :]
                if BITS == 16:
                    k_tile = tl.load(
                        k_base + k[None, :].to(tl.int64) * k_pos + d[:, None] * k_dim, mask=k_mask, other=0.0
                    )
                    if UPCAST:
                        k_tile = k_tile.to(tl.float32)
                else:  # unpack `8 // BITS` codes a byte, then scale per (channel, group of KEY_GROUP keys)
                    raw = tl.load(
                        k_base + k[None, :].to(tl.int64) * k_pos + (d[:, None] // (8 // BITS)) * k_dim,
                        mask=k_mask,
                        other=0,
                    )
                    codes = (raw.to(tl.int32) >> ((d[:, None] % (8 // BITS)) * BITS)) & ((1 << BITS) - 1)
                    rows = (k[None, :] // KEY_GROUP).to(tl.int64) * s_pos + d[:, None] * s_dim + s_offset
                    step = tl.load(key_scales + rows, mask=k_mask, other=0.0).to(tl.float32)
                    low = tl.load(key_zeros + rows, mask=k_mask, other=0.0).to(tl.float32)
                    k_tile = codes.to(tl.float32) * step + low
                # ieee: tf32 would round fp32 inputs to 10 mantissa bits; bf16/fp16 accumulate in fp32 either way
                logits = tl.dot(q_tile, k_tile, input_precision="ieee", out_dtype=tl.float32) * scale_log2
                logits = tl.where(k_ok[None, :], logits, float("-inf"))
                new_max = tl.maximum(run_max, tl.max(logits, axis=1))  # finite: every tile has a key
                run_sum = run_sum * tl.exp2(run_max - new_max) + tl.sum(tl.exp2(logits - new_max[:, None]), axis=1)
                run_max = new_max
            lse = (run_max + tl.log2(run_sum)) * _LN2
            w = tl.load(weights + q, mask=q_ok, other=0.0)
            if MAX_POOL:
                pooled = tl.maximum(pooled, tl.where(w > 0, lse, float("-inf")))
            else:
                pooled += tl.where(q_ok, w * lse, 0.0)
        tl.store(out + program, tl.max(pooled, axis=0) if MAX_POOL else tl.sum(pooled, axis=0))

    # Triton 3.9's CPU interpreter (TRITON_INTERPRET=1) computes bf16 `tl.dot` wrongly; there the
    # tiles are upcast first. On a GPU, bf16 stays bf16 for the tensor cores.
    from triton.runtime.interpreter import InterpretedFunction

    _INTERPRETED = isinstance(_gate_scores_kernel, InterpretedFunction)


def gate_scores_triton(
    queries: torch.Tensor,
    keys: torch.Tensor,
    block_offsets: torch.Tensor,
    query_weights: torch.Tensor,
    scale: float,
    pool: str,
    key_scales: torch.Tensor | None = None,
    key_zeros: torch.Tensor | None = None,
    bits: int = 16,
    key_group: int = 1,
) -> torch.Tensor:
    """`compressmem::gate_scores` by the fused kernel; same contract as `gate_scores_reference`, or, with `bits`
    below 16, as `gate_scores_packed_reference` (`keys` the packed codes, `key_scales`/`key_zeros` their groups).

    Inputs must be on a CUDA device (or on the CPU with `TRITON_INTERPRET=1` set before Triton is
    imported). The output starts as NaN, so an element the kernel failed to write cannot pass for a score.
    """
    if triton is None:
        raise ImportError(
            "gate_scores_triton needs Triton, which is not installed: "
            "pip install compressmem[kernels] (or use gate_scores, which falls back to torch)."
        )
    if pool not in ("mean", "max"):
        raise ValueError(f"pool must be 'mean' or 'max', got {pool!r}.")
    if queries.device.type == "cpu" and not _INTERPRETED:
        raise ValueError(
            "gate_scores_triton runs on CUDA tensors (CPU tensors only under TRITON_INTERPRET=1); "
            "use gate_scores, which picks the torch reference on the CPU."
        )
    layers, heads, num_queries, dim = queries.shape
    num_blocks = block_offsets.shape[0] - 1
    out = torch.full((num_blocks, layers, heads), float("nan"), dtype=torch.float32, device=queries.device)
    if num_blocks == 0:
        return out
    weights = query_weights.float()
    if pool == "mean":
        weights = weights / weights.sum()
    block_k = min(64, max(16, triton.next_power_of_2(keys.shape[2] // num_blocks)))
    if bits == 16:  # the scale and zero pointers are not read: any tensor will do
        key_scales = key_zeros = keys
    elif key_scales is None or key_zeros is None:
        raise ValueError(f"{bits}-bit keys need key_scales and key_zeros (from quantize(..., TOKENS)).")
    _gate_scores_kernel[(num_blocks * layers * heads,)](
        queries,
        keys,
        key_scales,
        key_zeros,
        block_offsets,
        weights,
        out,
        num_queries,
        dim,
        heads,
        heads // keys.shape[1],
        layers * heads,
        *queries.stride(),
        *keys.stride(),
        *key_scales.stride(),
        scale * _LOG2E,
        MAX_POOL=pool == "max",
        UPCAST=_INTERPRETED and queries.dtype == torch.bfloat16,
        BITS=bits,
        KEY_GROUP=key_group,
        BLOCK_Q=min(64, max(16, triton.next_power_of_2(num_queries))),
        BLOCK_K=block_k,
        BLOCK_D=max(16, triton.next_power_of_2(dim)),
    )
    return out
