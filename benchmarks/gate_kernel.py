"""Throughput of the gate's scoring op, `compressmem::gate_scores`, in blocks per second.

On the CPU: the torch reference eager vs `torch.compile` of it (compiled once per bank size before
timing; the compile time is reported on its own). With CUDA, also: the reference on the GPU vs the
fused Triton kernel, and the kernel's achieved bandwidth (bytes of keys and queries read / time) as a
fraction of the card's copy bandwidth, measured here with a large device-to-device `copy_`. All
ratios come from one run, side by side. Defaults are SmolLM2-135M's gate: 3 gate layers, 9 query
heads over 3 KV heads of dimension 64, blocks of 128 compressed keys (512-token chunks at ratio 4)
and a 96-token gate prompt; 437,500 keys is a 1.75M-token context at ratio 4.

With `--bits 8`, `4` or `2` the same keys are also scored packed (`compressmem.quantize`, groups of
`--group` keys per channel, as a quantized bank stores them): the CPU reference, which dequantises, and
on CUDA the kernel, which unpacks in registers, its bandwidth counted on the packed bytes it reads.

    python benchmarks/gate_kernel.py --sizes 1000,100000,437500 --repeats 3 --out gate_kernel.json
    python benchmarks/gate_kernel.py --sizes 100000,437500 --bits 4 --out gate_kernel_4bit.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torch._inductor.config

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,100000,437500", help="bank sizes in compressed keys, comma-separated")
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--heads", type=int, default=9)
    parser.add_argument("--kv-heads", type=int, default=3)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--block-keys", type=int, default=128, help="keys per block (the last block may be shorter)")
    parser.add_argument("--prompt", type=int, default=96, help="gate prompt tokens (queries)")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32")
    parser.add_argument("--pool", choices=["mean", "max"], default="mean")
    parser.add_argument("--bits", type=int, choices=[16, 8, 4, 2], default=16,
                        help="below 16, also score the keys packed to this many bits")
    parser.add_argument("--group", type=int, default=32, help="keys per scale and zero point of packed keys")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed rounds, each calling every variant once (medians are kept)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                        help="also time torch.compile of the CPU reference (minutes at 437,500 keys)")
    parser.add_argument("--out", help="also write the measurements to this JSON file")
    args = parser.parse_args()

    from compressmem.kernels import triton_available

    torch._inductor.config.force_disable_caches = True  # a cold compile each time, not a cache hit
    cuda = torch.cuda.is_available() and triton_available()
    copy_bandwidth = _copy_bandwidth() if cuda else None
    rows = []
    for keys_count in (int(size) for size in args.sizes.split(",")):
        rows.append(_measure(args, keys_count, copy_bandwidth))
        print(f"measured {keys_count} keys", flush=True)
    print(_table(rows, cuda))
    if args.bits < 16:
        print("\n" + _packed_table(rows, cuda, args.bits))
    print(f"\n{torch.get_num_threads()} CPU threads, {args.dtype}, pool={args.pool}, median of {args.repeats}; "
          f"load average at the end: {os.getloadavg()[0]:.2f}")
    if args.out:
        device = torch.cuda.get_device_name() if cuda else platform.processor() or platform.machine()
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump({"config": vars(args), "device": device, "torch": torch.__version__,
                       "cpu_threads": torch.get_num_threads(), "load_average": os.getloadavg(), "rows": rows},
                      handle, indent=2)


def _measure(args: argparse.Namespace, keys_count: int, copy_bandwidth: float | None) -> dict:
    """One bank size: CPU eager vs compiled reference and, given `copy_bandwidth` (CUDA), the kernel."""
    from compressmem.kernels import gate_scores_reference, gate_scores_triton

    inputs = _inputs(args, keys_count)
    row = {"keys": keys_count, "blocks": inputs[2].shape[0] - 1}
    if args.compile:
        compiled_fn = torch.compile(gate_scores_reference, dynamic=False, fullgraph=True)
        start = time.perf_counter()
        compiled_out = compiled_fn(*inputs)
        first_call = time.perf_counter() - start
        difference = (compiled_out - gate_scores_reference(*inputs)).abs().max()  # also eager's warm-up
        eager, compiled = _cpu_seconds([lambda: gate_scores_reference(*inputs), lambda: compiled_fn(*inputs)],
                                       args.repeats)
        row.update(cpu_compiled_s=compiled, compile_s=first_call - compiled,
                   cpu_compiled_max_abs_diff=float(difference))
    else:
        gate_scores_reference(*inputs)  # warm-up
        (eager,) = _cpu_seconds([lambda: gate_scores_reference(*inputs)], args.repeats)
    row["cpu_eager_s"] = eager
    if copy_bandwidth is not None:
        on_gpu = [x.cuda() if isinstance(x, torch.Tensor) else x for x in inputs]
        expected = gate_scores_reference(*on_gpu)
        error = (gate_scores_triton(*on_gpu) - expected).abs().max() / expected.abs().max()  # also compiles it
        reference, kernel = _cuda_seconds([lambda: gate_scores_reference(*on_gpu), lambda: gate_scores_triton(*on_gpu)],
                                          args.repeats)
        read = sum(x.numel() * x.element_size() for x in on_gpu[:2])
        row.update(cuda_reference_s=reference, triton_s=kernel, triton_relative_error=float(error),
                   triton_gb_s=read / kernel / 1e9, copy_gb_s=copy_bandwidth / 1e9,
                   fraction_of_copy=read / kernel / copy_bandwidth)
    if args.bits < 16:
        row.update(_measure_packed(args, inputs, copy_bandwidth))
    return row


def _measure_packed(args: argparse.Namespace, inputs: tuple, copy_bandwidth: float | None) -> dict:
    """The same bank packed to `--bits`: float vs packed reference on the CPU and, with CUDA, the packed kernel."""
    from compressmem.kernels import gate_scores_packed_reference, gate_scores_reference, gate_scores_triton
    from compressmem.quantize import TOKENS, quantize

    queries, keys, offsets, weights, scale, pool = inputs
    packed = quantize(keys.float(), args.bits, args.group, TOKENS)
    packed_args = (packed.data, packed.scales, packed.zeros, args.bits, args.group, offsets, weights, scale, pool)
    gate_scores_packed_reference(queries, *packed_args)  # warm-up
    full, unpacking = _cpu_seconds([lambda: gate_scores_reference(*inputs),
                                    lambda: gate_scores_packed_reference(queries, *packed_args)], args.repeats)
    row = {"packed_bytes": packed.nbytes, "float_bytes": keys.numel() * keys.element_size(),
           "cpu_float_s": full, "cpu_packed_s": unpacking}
    if copy_bandwidth is not None:
        q, codes, scales, zeros, bank = (x.cuda() for x in (queries, packed.data, packed.scales, packed.zeros, offsets))
        w = weights.cuda()
        expected = gate_scores_packed_reference(q, codes, scales, zeros, args.bits, args.group, bank, w, scale, pool)

        def kernel_fn() -> torch.Tensor:
            return gate_scores_triton(q, codes, bank, w, scale, pool, scales, zeros, args.bits, args.group)

        error = (kernel_fn() - expected).abs().max() / expected.abs().max()
        (kernel,) = _cuda_seconds([kernel_fn], args.repeats)
        read = packed.nbytes + q.numel() * q.element_size()
        row.update(triton_packed_s=kernel, triton_packed_relative_error=float(error),
                   triton_packed_gb_s=read / kernel / 1e9, packed_fraction_of_copy=read / kernel / copy_bandwidth)
    return row


def _inputs(args: argparse.Namespace, keys_count: int) -> tuple:
    """Random gate queries and a bank of `keys_count` keys in blocks of `--block-keys`, on the CPU."""
    dtype = DTYPES[args.dtype]
    queries = torch.randn(args.layers, args.heads, args.prompt, args.head_dim).to(dtype)
    keys = torch.randn(args.layers, args.kv_heads, keys_count, args.head_dim).to(dtype)
    offsets = torch.cat([torch.arange(0, keys_count, args.block_keys), torch.tensor([keys_count])])
    return queries, keys, offsets, torch.ones(args.prompt), args.head_dim ** -0.5, args.pool


def _cpu_seconds(fns: list[Callable[[], object]], repeats: int) -> list[float]:
    """Median wall time of each function over `repeats` rounds that call them in turn, so that a
    change in the machine's load hits them alike."""
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, samples in zip(fns, times):
            start = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - start)
    return [statistics.median(samples) for samples in times]


def _cuda_seconds(fns: list[Callable[[], object]], repeats: int) -> list[float]:
    """Median GPU time of each function over `repeats` rounds that call them in turn, after a warm-up."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, samples in zip(fns, times):
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            samples.append(start.elapsed_time(stop) / 1e3)
    return [statistics.median(samples) for samples in times]


def _copy_bandwidth(size: int = 1 << 30) -> float:
    """The card's device-to-device copy bandwidth in bytes/s (bytes read + bytes written)."""
    source = torch.empty(size, dtype=torch.uint8, device="cuda")
    target = torch.empty_like(source)
    return 2 * size / _cuda_seconds([lambda: target.copy_(source)], 10)[0]


def _table(rows: list[dict], cuda: bool) -> str:
    header = ["bank keys", "blocks", "CPU eager blocks/s", "CPU compiled blocks/s", "compiled / eager", "compile s",
              "max abs diff"]
    if cuda:
        header += ["CUDA reference blocks/s", "Triton blocks/s", "Triton / reference", "Triton GB/s",
                   "of copy bandwidth", "Triton rel. error"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [f"{row['keys']:,}", f"{row['blocks']:,}", f"{row['blocks'] / row['cpu_eager_s']:,.0f}"]
        if "cpu_compiled_s" in row:
            cells += [f"{row['blocks'] / row['cpu_compiled_s']:,.0f}",
                      f"{row['cpu_eager_s'] / row['cpu_compiled_s']:.2f}", f"{row['compile_s']:.1f}",
                      f"{row['cpu_compiled_max_abs_diff']:.1e}"]
        else:
            cells += ["-"] * 4
        if cuda:
            cells += [f"{row['blocks'] / row['cuda_reference_s']:,.0f}", f"{row['blocks'] / row['triton_s']:,.0f}",
                      f"{row['cuda_reference_s'] / row['triton_s']:.1f}", f"{row['triton_gb_s']:.0f}",
                      f"{row['fraction_of_copy']:.0%}", f"{row['triton_relative_error']:.1e}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _packed_table(rows: list[dict], cuda: bool, bits: int) -> str:
    header = ["bank keys", f"{bits}-bit key bytes / float", "CPU float ref. blocks/s", "CPU packed ref. blocks/s",
              "packed / float"]
    if cuda:
        header += ["Triton packed blocks/s", "vs float Triton", "Triton packed GB/s", "of copy bandwidth",
                   "Triton rel. error"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [f"{row['keys']:,}", f"{row['packed_bytes'] / row['float_bytes']:.3f}",
                 f"{row['blocks'] / row['cpu_float_s']:,.0f}", f"{row['blocks'] / row['cpu_packed_s']:,.0f}",
                 f"{row['cpu_float_s'] / row['cpu_packed_s']:.2f}"]
        if cuda:
            cells += [f"{row['blocks'] / row['triton_packed_s']:,.0f}",
                      f"{row['triton_s'] / row['triton_packed_s']:.2f}", f"{row['triton_packed_gb_s']:.0f}",
                      f"{row['packed_fraction_of_copy']:.0%}", f"{row['triton_packed_relative_error']:.1e}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
