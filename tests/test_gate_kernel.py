"""`compressmem::gate_scores`: the torch reference against a naive loop, the Triton kernel against the
reference under Triton's CPU interpreter, the input checks, and the op under `torch.compile`.

The interpreter must be switched on before Triton compiles the kernel, i.e. before `compressmem` is
imported, so those checks run in a subprocess (`python -m tests.test_gate_kernel`) with
`TRITON_INTERPRET=1`; this process and the rest of the suite never see the variable. The subprocess
draws fresh random inputs on every run and reports each case's seed, which replays it:

    TRITON_INTERPRET=1 python -m tests.test_gate_kernel --case CASE --seed SEED
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
import traceback
from pathlib import Path
from unittest import mock

import pytest
import torch

from compressmem.kernels import (
    gate_scores,
    gate_scores_packed_reference,
    gate_scores_reference,
    gate_scores_triton,
    reference,
)
from compressmem.quantize import CHANNELS, TOKENS, quantize

from .test_gate import _naive_scores

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2}
# Interpreted cases, small (the interpreter runs each program in numpy) but covering ragged blocks
# with 1-key blocks and blocks of several key tiles, one prompt token, hundreds of blocks, GQA
# ratios 1/2/4/8, head_dim 8, 24 and 64 (masked up to a power of two), more queries than one
# query tile (70 > 64), and the three dtypes.
CASES = {
    "ragged_gqa2_d24_fp32": dict(layers=2, kv_heads=2, group=2, queries=20, dim=24, blocks=8, longest=70,
                                 dtype=torch.float32),
    "ragged_gqa2_d24_bf16": dict(layers=2, kv_heads=1, group=2, queries=9, dim=24, blocks=5, longest=40,
                                 dtype=torch.bfloat16),
    "one_token_gqa1_d64_bf16": dict(layers=1, kv_heads=3, group=1, queries=1, dim=64, blocks=4, longest=30,
                                    dtype=torch.bfloat16),
    "two_query_tiles_gqa4_d64_fp16": dict(layers=1, kv_heads=2, group=4, queries=70, dim=64, blocks=5, longest=20,
                                          dtype=torch.float16),
    "gqa8_d24_fp32": dict(layers=1, kv_heads=1, group=8, queries=7, dim=24, blocks=3, longest=12,
                          dtype=torch.float32),
    "many_blocks_d8_fp32": dict(layers=1, kv_heads=1, group=1, queries=3, dim=8, blocks=300, longest=3,
                                dtype=torch.float32),
}
# Packed keys (bits, keys per scale group) on some of the same shapes: groups that straddle blocks and
# ragged last groups, 2-bit codes four to a byte, bf16 queries against unpacked float32 keys.
PACKED = {
    "packed4_g16_ragged_gqa2_d24_fp32": ("ragged_gqa2_d24_fp32", 4, 16),
    "packed8_g4_ragged_gqa2_d24_bf16": ("ragged_gqa2_d24_bf16", 8, 4),
    "packed2_g32_two_query_tiles_gqa4_d64_fp16": ("two_query_tiles_gqa4_d64_fp16", 2, 32),
    "packed4_g3_many_blocks_d8_fp32": ("many_blocks_d8_fp32", 4, 3),
}


def _case_inputs(spec: dict, generator: torch.Generator) -> tuple:
    """Random queries, keys, ragged offsets (with 1-key blocks and one `longest`), weights and scale."""
    sizes = torch.randint(1, spec["longest"] + 1, (spec["blocks"],), generator=generator)
    sizes[0], sizes[-1], sizes[spec["blocks"] // 2] = 1, 1, spec["longest"]
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)])
    heads = spec["kv_heads"] * spec["group"]
    queries = torch.randn(spec["layers"], heads, spec["queries"], spec["dim"], generator=generator)
    keys = torch.randn(spec["layers"], spec["kv_heads"], int(offsets[-1]), spec["dim"], generator=generator)
    weights = torch.rand(spec["queries"], generator=generator)
    weights[torch.rand(spec["queries"], generator=generator) < 0.3] = 0
    weights[int(torch.randint(spec["queries"], (1,), generator=generator))] = 1.0
    sharpness = 1 + 7 * float(torch.rand((), generator=generator))  # the gate sharpens logits up to 8x
    return (queries.to(spec["dtype"]), keys.to(spec["dtype"]), offsets, weights,
            sharpness * spec["dim"] ** -0.5)


def _check_case(name: str, seed: int) -> None:
    """Kernel vs reference on one case's inputs drawn from `seed`, both pools; raises on any mismatch. A packed
    case quantizes the keys and holds the kernel to the dequantising reference (float32: both unpack the same
    codes and scales), and that reference to the float keys it came from."""
    packed = PACKED.get(name)
    spec = CASES[packed[0] if packed else name]
    queries, keys, offsets, weights, scale = _case_inputs(spec, torch.Generator().manual_seed(seed))
    quantized = quantize(keys, packed[1], packed[2], TOKENS) if packed else None
    for pool in ("mean", "max"):
        with mock.patch("torch.full", wraps=torch.full) as full:
            if packed:
                out = gate_scores_triton(queries, quantized.data, offsets, weights, scale, pool, quantized.scales,
                                         quantized.zeros, quantized.bits, quantized.group)
            else:
                out = gate_scores_triton(queries, keys, offsets, weights, scale, pool)
        assert any(call.args[0] == tuple(out.shape) and math.isnan(call.args[1]) for call in full.call_args_list), \
            "the launcher must fill its output with NaN before the launch, so unwritten elements show"
        if packed:
            expected = gate_scores_packed_reference(queries, quantized.data, quantized.scales, quantized.zeros,
                                                    quantized.bits, quantized.group, offsets, weights, scale, pool)
            tolerance = TOLERANCE[torch.float32] if spec["dtype"] == torch.float32 else TOLERANCE[spec["dtype"]]
        else:
            expected = gate_scores_reference(queries.float(), keys.float(), offsets, weights, scale, pool)
            tolerance = TOLERANCE[spec["dtype"]]
        assert out.dtype == torch.float32 and out.shape == expected.shape, (out.dtype, out.shape)
        assert not out.isnan().any(), f"pool={pool}: {int(out.isnan().sum())} NaN (unwritten?) of {out.numel()}"
        error = float((out - expected).abs().max() / expected.abs().max())
        assert error < tolerance, f"pool={pool}: relative error {error:.3g}"


def _run_cases(names: list[str], seed: int | None) -> None:
    """Subprocess side: one JSON line per case, with its seed and error (None when it passed)."""
    for name in names:
        case_seed = torch.seed() if seed is None else seed
        try:
            _check_case(name, case_seed)
            error = None
        except Exception:
            error = traceback.format_exc()
        print(json.dumps({"case": name, "seed": case_seed, "error": error}), flush=True)


@pytest.fixture(scope="module")
def interpreted():
    """Every interpreted case's result, from one subprocess (one Triton and torch start-up)."""
    pytest.importorskip("triton", reason="the Triton kernel needs triton: pip install compressmem[kernels]")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    run = subprocess.run([sys.executable, "-m", "tests.test_gate_kernel"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=600)
    results = {}
    for line in run.stdout.splitlines():
        if line.startswith("{"):
            result = json.loads(line)
            results[result["case"]] = result
    assert run.returncode == 0 and results, f"interpreter subprocess failed:\n{run.stdout}\n{run.stderr}"
    return results


@pytest.mark.parametrize("case", [*CASES, *PACKED])
def test_triton_kernel_matches_the_reference_under_the_interpreter(interpreted, case):
    result = interpreted[case]
    assert result["error"] is None, (
        f"case {case}, seed {result['seed']}; replay with TRITON_INTERPRET=1 python -m tests.test_gate_kernel "
        f"--case {case} --seed {result['seed']}\n{result['error']}")


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
@pytest.mark.filterwarnings("ignore:TRITON_DEFAULT_FP_FUSION is unset")
def test_triton_kernel_compiles_for_nvidia_gpus(dtype):
    """What only the GPU compiler rejects (the interpreter runs any Python), compiled ahead of time with
    no GPU for sm_80 and sm_90: fp32 must stay exact (FMA, no tf32 MMA), bf16/fp16 use tensor cores."""
    triton = pytest.importorskip("triton", reason="the Triton kernel needs triton: pip install compressmem[kernels]")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from compressmem.kernels import triton_gate

    kernel = triton_gate._gate_scores_kernel
    if not isinstance(kernel, triton.runtime.JITFunction):
        pytest.skip("TRITON_INTERPRET is set in this process: the kernel is interpreted, not compiled")
    pointers = {"queries": f"*{dtype}", "keys": f"*{dtype}", "key_scales": f"*{dtype}", "key_zeros": f"*{dtype}",
                "offsets": "*i64", "weights": "*fp32", "out": "*fp32"}
    constants = {"UPCAST": False, "BITS": 16, "KEY_GROUP": 1, "BLOCK_Q": 64, "BLOCK_K": 64, "BLOCK_D": 64}
    signature = {name: pointers.get(name, "constexpr" if name.isupper() else "fp32" if name == "scale_log2" else "i32")
                 for name in kernel.arg_names}
    for capability in (80, 90):
        for max_pool in (False, True):
            source = ASTSource(kernel, signature, {**constants, "MAX_POOL": max_pool})
            ptx = triton.compile(source, target=GPUTarget("cuda", capability, 32)).asm["ptx"]
            assert ("mma" in ptx) == (dtype != "fp32"), (capability, max_pool)


@pytest.mark.parametrize("bits", [8, 4, 2])
@pytest.mark.filterwarnings("ignore:TRITON_DEFAULT_FP_FUSION is unset")
def test_packed_key_kernel_compiles_for_nvidia_gpus(bits):
    """Packed uint8 keys with float16 scales, unpacked in registers, compile for sm_80 and sm_90."""
    triton = pytest.importorskip("triton", reason="the Triton kernel needs triton: pip install compressmem[kernels]")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from compressmem.kernels import triton_gate

    kernel = triton_gate._gate_scores_kernel
    if not isinstance(kernel, triton.runtime.JITFunction):
        pytest.skip("TRITON_INTERPRET is set in this process: the kernel is interpreted, not compiled")
    pointers = {"queries": "*bf16", "keys": "*u8", "key_scales": "*fp16", "key_zeros": "*fp16", "offsets": "*i64",
                "weights": "*fp32", "out": "*fp32"}
    constants = {"UPCAST": False, "BITS": bits, "KEY_GROUP": 32, "BLOCK_Q": 64, "BLOCK_K": 64, "BLOCK_D": 64,
                 "MAX_POOL": False}
    signature = {name: pointers.get(name, "constexpr" if name.isupper() else "fp32" if name == "scale_log2" else "i32")
                 for name in kernel.arg_names}
    for capability in (80, 90):
        ptx = triton.compile(ASTSource(kernel, signature, constants), target=GPUTarget("cuda", capability, 32))
        assert "ld.global" in ptx.asm["ptx"]


def test_packed_keys_score_through_the_wrapper_and_the_op_and_trace():
    """`gate_scores` takes `Quantized` keys (grouped along keys), refuses other groupings, and the packed op
    traces under `torch.compile` and passes `opcheck`."""
    generator = torch.Generator().manual_seed(0)
    queries, keys = torch.randn(2, 4, 3, 16, generator=generator), torch.randn(2, 2, 21, 16, generator=generator)
    offsets, weights = torch.tensor([0, 1, 9, 21]), torch.tensor([1.0, 0.0, 2.0])
    packed = quantize(keys, 4, 8, TOKENS)
    expected = gate_scores_reference(queries, packed.dequantize(), offsets, weights, 0.5, "mean")
    torch.testing.assert_close(gate_scores(queries, packed, offsets, weights, 0.5), expected)
    with pytest.raises(ValueError, match="grouped along keys"):
        gate_scores(queries, quantize(keys, 4, 8, CHANNELS), offsets, weights, 0.5)
    args = (queries, packed.data, packed.scales, packed.zeros, 4, 8, offsets, weights, 0.5, "max")

    def op(*tensors):
        return torch.ops.compressmem.gate_scores_packed(*tensors[:4], 4, 8, *tensors[4:], 0.5, "max")

    torch.testing.assert_close(torch.compile(op, fullgraph=True, backend="aot_eager")(*args[:4], offsets, weights),
                               gate_scores_packed_reference(*args))
    torch.library.opcheck(torch.ops.compressmem.gate_scores_packed.default, args)


@pytest.mark.parametrize("pool", ["mean", "max"])
@pytest.mark.parametrize("group", [1, 3])
def test_reference_matches_a_naive_loop_across_key_chunks(monkeypatch, pool, group):
    """Chunks of 5 keys cut blocks and hold several blocks: the online merge must not care."""
    generator = torch.Generator().manual_seed(group)
    sizes = [1, 7, 3, 12, 1, 1, 5, 2]
    offsets = torch.tensor([0] + sizes).cumsum(0)
    queries = torch.randn(2, 2 * group, 4, 12, generator=generator)
    keys = torch.randn(2, 2, int(offsets[-1]), 12, generator=generator)
    weights = torch.tensor([0.5, 0.0, 2.0, 1.0])
    expected = _naive_scores(queries, keys, offsets, 0.9, weights, pool)
    whole = gate_scores_reference(queries, keys, offsets, weights, 0.9, pool)
    monkeypatch.setattr(reference, "_LOGITS_PER_CHUNK", 5 * queries.shape[:3].numel())
    chunked = gate_scores_reference(queries, keys, offsets, weights, 0.9, pool)
    torch.testing.assert_close(whole, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(chunked, expected, atol=1e-5, rtol=1e-5)


def test_reference_accumulates_low_precision_inputs_in_fp32():
    queries, keys = torch.randn(1, 2, 3, 16).bfloat16(), torch.randn(1, 1, 9, 16).bfloat16()
    offsets, weights = torch.tensor([0, 4, 9]), torch.ones(3)
    out = gate_scores_reference(queries, keys, offsets, weights, 0.25, "mean")
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, gate_scores_reference(queries.float(), keys.float(), offsets, weights, 0.25,
                                                          "mean"))


def _inputs(**changes) -> dict:
    inputs = dict(queries=torch.randn(2, 4, 3, 8), keys=torch.randn(2, 2, 6, 8), block_offsets=torch.tensor([0, 2, 6]))
    return {**inputs, **changes}


@pytest.mark.parametrize("changes, error, match", [
    (dict(queries=torch.randn(4, 3, 8)), ValueError, r"queries must be \[layers, heads, q, d\]"),
    (dict(keys=torch.randn(3, 2, 6, 8)), ValueError, "must agree on layers"),
    (dict(keys=torch.randn(2, 2, 6, 16)), ValueError, "head_dim"),
    (dict(keys=torch.randn(2, 3, 6, 8)), ValueError, r"query heads \(4\) must be a multiple of KV heads \(3\)"),
    (dict(queries=torch.randn(2, 4, 0, 8)), ValueError, "at least one query"),
    (dict(keys=torch.randn(2, 2, 6, 8).half()), TypeError, "share one dtype"),
    (dict(queries=torch.randn(2, 4, 3, 8).double(), keys=torch.randn(2, 2, 6, 8).double()), TypeError,
     "float32, bfloat16 and float16"),
    (dict(block_offsets=torch.tensor([0, 2, 6], dtype=torch.int32)), ValueError, "1-D int64"),
    (dict(block_offsets=torch.tensor([[0, 2, 6]])), ValueError, "1-D int64"),
    (dict(block_offsets=torch.tensor([1, 2, 6])), ValueError, "start at 0 and end at the number of keys"),
    (dict(block_offsets=torch.tensor([0, 2, 5])), ValueError, r"end at the number of keys \(6\)"),
    (dict(block_offsets=torch.tensor([0, 2, 2, 6])), ValueError, "strictly increasing"),
    (dict(block_offsets=torch.tensor([0, 4, 2, 6])), ValueError, "strictly increasing"),
    (dict(query_weights=torch.ones(4)), ValueError, r"query_weights must be a float \(or bool\) \[q\] = \[3\]"),
    (dict(query_weights=torch.zeros(3)), ValueError, "at least one positive weight"),
    (dict(query_weights=torch.tensor([1.0, -0.5, 1.0])), ValueError, "non-negative"),
    (dict(block_offsets=torch.tensor([0, 2, 6], device="meta")), ValueError, "must be on one device"),
    (dict(pool="sum"), ValueError, r"pool must be one of \('mean', 'max'\), got 'sum'"),
])
def test_wrapper_rejects_bad_inputs_clearly(changes, error, match):
    with pytest.raises(error, match=match):
        gate_scores(**_inputs(**changes))


def test_triton_is_optional(monkeypatch):
    """Without Triton, the kernels module still imports and the launcher says how to get it."""
    monkeypatch.setitem(sys.modules, "triton", None)
    spec = importlib.util.spec_from_file_location("triton_gate_without_triton",
                                                  ROOT / "compressmem" / "kernels" / "triton_gate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert not module.triton_available()
    with pytest.raises(ImportError, match=r"pip install compressmem\[kernels\]"):
        module.gate_scores_triton(*_inputs().values(), torch.ones(3), 0.5, "mean")


def test_op_traces_whole_and_matches_eager():
    """The fake implementation lets `torch.compile(fullgraph=True)` trace the op and the wrapper."""
    inputs = _inputs(query_weights=torch.tensor([1.0, 0.0, 2.0]))
    args = (*inputs.values(), 0.4, "max")

    def op(queries, keys, offsets, weights):
        return torch.ops.compressmem.gate_scores(queries, keys, offsets, weights, 0.4, "max")

    def wrapper(queries, keys, offsets, weights):
        return gate_scores(queries, keys, offsets, weights, scale=0.4, pool="max")

    expected = gate_scores_reference(*args)
    torch.testing.assert_close(torch.compile(op, fullgraph=True, backend="aot_eager")(*args[:4]), expected)
    torch.testing.assert_close(torch.compile(wrapper, fullgraph=True, backend="eager")(*args[:4]), expected)
    torch.testing.assert_close(torch.compile(gate_scores_reference, fullgraph=True, backend="eager")(*args), expected)
    torch.library.opcheck(torch.ops.compressmem.gate_scores.default, args)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Run the interpreted kernel checks (set TRITON_INTERPRET=1).")
    parser.add_argument("--case", choices=[*CASES, *PACKED], action="append", help="a case to run (all by default)")
    parser.add_argument("--seed", type=int, help="replay a reported seed")
    cli = parser.parse_args()
    _run_cases(cli.case or [*CASES, *PACKED], cli.seed)
