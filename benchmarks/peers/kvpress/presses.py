"""Peer side of `benchmarks/kvpress_compare.py`: what NVIDIA kvpress keeps of one chunk, in kvpress's own venv.

Never imports compressmem: it reads what our side wrote and writes safetensors and JSON back.

`chunks`: for each line of a JSONL of chunks (`case_id`, `input_ids` = the bank's prefix ids then the chunk's ids,
`prefix_len` p), every press at every ratio scores the entries in the model's forward as kvpress runs it (its
forward hook on each attention layer), wrapped so that only the chunk is compressed: the prefix's scores are
forced to +inf and `p + int((n - p) * (1 - ratio))` of the n entries are kept per layer and KV head. All presses
are captured from one shared forward per chunk; on the first chunk each is checked against its own forward
(see `verify`). The kept entries are written as `indices` int32 `[layers, kv_heads, m]` into prefix + chunk,
sorted. KVzip scores every entry by replaying the context; its scores are kept per layer and head the same
way (kvpress lets KVzip spread its budget unevenly over heads and layers, which a block of
`[layers, kv_heads, m]` cannot hold). transformers' QuantizedCache on optimum-quanto (kvpress's quantized
cache, its defaults: groups of 64, residual of 128) writes instead the dequantized `keys` and `values` of the
chunk's entries, `[layers, kv_heads, n - p, d]`.
`manifest.json` holds the seconds taken, the bytes the quantized cache stores, and the checks of the first
case (the captured indices against the pruned cache of a real kvpress forward).

`pipeline`: kvpress's own pipeline (`pipeline("kv-press-text-generation", ...)`, as in its README: the
context, then `question="\\n" + question`, default generation) on whole cases, with no press, Knorm and SnapKV.

    benchmarks/peers/kvpress/.venv/bin/python benchmarks/peers/kvpress/presses.py chunks \\
        --chunks WORK/chunks.jsonl --model MODEL_DIR --out WORK/peer
    benchmarks/peers/kvpress/.venv/bin/python benchmarks/peers/kvpress/presses.py pipeline \\
        --cases WORK/cases.jsonl --model MODEL_DIR --out WORK/pipeline.jsonl
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
from kvpress import (
    ExpectedAttentionPress,
    KnormPress,
    KVzipPress,
    ScorerPress,
    SnapKVPress,
    StreamingLLMPress,
    TOVAPress,
)
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, DynamicCache, QuantizedCache, pipeline

PRESSES = {"Knorm": KnormPress, "SnapKV": SnapKVPress, "ExpectedAttention": ExpectedAttentionPress,
           "StreamingLLM": StreamingLLMPress, "TOVA": TOVAPress}
RATIOS = (0.5, 0.75)
QUANTO_BITS = (4, 2)
PIPELINE_PRESSES = {"no press": None, "Knorm 2x": lambda: KnormPress(0.5), "SnapKV 2x": lambda: SnapKVPress(0.5)}


@dataclass
class ChunkOnlyPress(ScorerPress):
    """`press`'s scores with the first `prefix_len` entries forced to +inf: keeps the prefix whole and
    `int(chunk * (1 - compression_ratio))` chunk entries per layer and KV head; records what it keeps."""

    press: ScorerPress | None = None
    prefix_len: int = 0
    kept: dict[int, torch.Tensor] = field(default_factory=dict)

    def post_init_from_model(self, model) -> None:
        self.press.post_init_from_model(model)

    def score(self, module, hidden_states, keys, values, attentions, kwargs) -> torch.Tensor:
        return self.press.score(module, hidden_states, keys, values, attentions, kwargs)

    def compress(self, module, hidden_states, keys, values, attentions, kwargs):
        scores = self.score(module, hidden_states, keys, values, attentions, kwargs)
        indices = keep_top(scores, self.prefix_len, self.compression_ratio)
        self.kept[module.layer_idx] = indices[0].to(torch.int32).cpu()
        gather = indices.unsqueeze(-1).expand(-1, -1, -1, module.head_dim)
        return keys.gather(2, gather).contiguous(), values.gather(2, gather).contiguous()


@dataclass
class CaptureAll(ScorerPress):
    """Every `(name, ratio)` of `presses` scored in the same forward as `ChunkOnlyPress` would score it, and
    what it would keep recorded; the cache is left whole (pruning one layer's cache after its prefill attention
    changes nothing in the next layers, so each capture is what that press's own forward keeps)."""

    presses: dict[tuple[str, float], ChunkOnlyPress] = field(default_factory=dict)

    def post_init_from_model(self, model) -> None:
        for press in self.presses.values():
            press.post_init_from_model(model)

    def compress(self, module, hidden_states, keys, values, attentions, kwargs):
        for press in self.presses.values():
            press.compress(module, hidden_states, keys, values, attentions, kwargs)
        return keys, values


@dataclass
class KVzipScores(KVzipPress):
    """KVzip's scoring passes (context reconstruction), its scores kept instead of masking the cache."""

    scores: torch.Tensor | None = None

    def compress_post(self, model) -> None:
        self.scores = self.score_val[:, 0].float().clone()  # [layers, kv_heads, n]


def keep_top(scores: torch.Tensor, prefix_len: int, ratio: float) -> torch.Tensor:
    """Sorted indices of the first `prefix_len` entries (their scores forced to +inf) and the
    `int(chunk * (1 - ratio))` best of the rest, along the last dimension."""
    scores = scores.float().clone()
    scores[..., :prefix_len] = float("inf")
    chunk = scores.shape[-1] - prefix_len
    return scores.topk(prefix_len + int(chunk * (1 - ratio)), dim=-1).indices.sort(dim=-1).values


def inner_press(name: str, ratio: float, num_entries: int, prefix_len: int) -> ScorerPress:
    """The kvpress press `name` as the chunk-only wrapper calls it. StreamingLLM's prefix is its sink and its
    pruned band is sized to the chunk: the band follows the prefix and holds exactly the chunk entries to drop."""
    if name != "StreamingLLM":
        return PRESSES[name](compression_ratio=ratio)
    chunk = num_entries - prefix_len
    pruned = chunk - int(chunk * (1 - ratio))
    return StreamingLLMPress(compression_ratio=(pruned - 0.5) / num_entries, n_sink=prefix_len)


def forward(model, ids: torch.Tensor, press=None, cache=None):
    """Prefill `ids` as kvpress's pipeline does (the model without its head), under `press` when given."""
    cache = DynamicCache() if cache is None else cache
    with torch.no_grad():
        if press is None:
            model.model(input_ids=ids, past_key_values=cache)
        else:
            with press(model):
                model.model(input_ids=ids, past_key_values=cache)
    return cache


def chunk_only(name: str, ratio: float, num_entries: int, prefix_len: int) -> ChunkOnlyPress:
    """kvpress's press `name` at `ratio`, compressing only what follows the first `prefix_len` of `num_entries`."""
    return ChunkOnlyPress(compression_ratio=ratio, press=inner_press(name, ratio, num_entries, prefix_len),
                          prefix_len=prefix_len)


def all_indices(model, ids: torch.Tensor, prefix_len: int,
                plain: bool = False) -> dict[tuple[str, float], torch.Tensor]:
    """`[layers, kv_heads, m]` kept indices of every press at every ratio on `ids`, from one forward (`plain`: the
    presses with kvpress's own settings, as the wrapper with no prefix calls them)."""
    capture = CaptureAll(presses={
        (name, ratio): ChunkOnlyPress(compression_ratio=ratio, press=PRESSES[name](compression_ratio=ratio))
        if plain else chunk_only(name, ratio, ids.shape[1], prefix_len) for name in PRESSES for ratio in RATIOS})
    forward(model, ids, capture)
    return {key: torch.stack([press.kept[i] for i in range(len(press.kept))])
            for key, press in capture.presses.items()}


def kvzip_scores(model, ids: torch.Tensor) -> torch.Tensor:
    """KVzip's importance of every entry of `ids`, `[layers, kv_heads, n]` (the cache is left uncompressed)."""
    press = KVzipScores(compression_ratio=0.5)
    forward(model, ids, press)
    return press.scores


def quantized_kv(model, ids: torch.Tensor, bits: int, prefix_len: int) -> tuple[dict, float, dict]:
    """The chunk's keys and values as kvpress's QuantizedCache (optimum-quanto, transformers' defaults) stores
    them, dequantized; the bytes a chunk token takes there (codes, and a scale and zero point per group at
    2 bytes each as in a bf16 model, full-precision residual); and what was stored."""
    cache = forward(model, ids, cache=QuantizedCache(backend="quanto", config=model.config, nbits=bits))
    keys, values, stored, residual = [], [], 0.0, 0
    for layer in cache.layers:
        for name, qtensor, out in (("keys", layer._quantized_keys, keys), ("values", layer._quantized_values, values)):
            out.append(qtensor.dequantize()[0, :, prefix_len:].float())
            groups = qtensor.numel() // qtensor._group_size
            stored += qtensor.numel() * bits / 8 + groups * 2 * 2
        residual += sum(t.numel() for t in (layer.keys, layer.values))
    stored += residual * 2
    scale_dtype = str(cache.layers[0]._quantized_keys._scale.dtype)
    info = {"group_size": cache.layers[0].q_group_size, "residual_length": cache.layers[0].residual_length,
            "residual_entries": residual, "scale_dtype_here": scale_dtype,
            "qtensor": type(cache.layers[0]._quantized_keys).__name__}
    return {"keys": torch.stack(keys), "values": torch.stack(values)}, stored / ids.shape[1], info


def matched_indices(pruned: torch.Tensor, full: torch.Tensor) -> tuple[torch.Tensor, float]:
    """For each row of `pruned` `[1, h, m, d]`, the index of the nearest row of `full` `[1, h, n, d]`, sorted,
    and the largest such distance (0 when every pruned row is a row of the full cache)."""
    distances = torch.cdist(pruned[0].double(), full[0].double(), compute_mode="donot_use_mm_for_euclid_dist")
    nearest = distances.min(dim=-1)
    return nearest.indices.sort(dim=-1).values, float(nearest.values.max())


def verify(model, ids: torch.Tensor, prefix_len: int) -> dict[tuple[str, float], dict]:
    """Checks on one case, per press and ratio, that the captured indices are what the press keeps:
    - `same_as_own_forward`: the capture of the shared forward equals that of the press's own forward, whose
      pruned cache equals the full cache gathered at them (`pruned_equals_gathered_max_abs`), with every prefix
      entry kept and `p + int(chunk * (1 - ratio))` entries;
    - `plain_press_heads_mismatched`: the press itself, as kvpress runs it (no wrapper, whole input), keeps
      exactly the entries that the capture records when it is given no prefix (layer-heads that differ)."""
    full = forward(model, ids)
    shared, unprotected = all_indices(model, ids, prefix_len), all_indices(model, ids, 0, plain=True)
    checks = {}
    for (name, ratio), captured in shared.items():
        press = chunk_only(name, ratio, ids.shape[1], prefix_len)
        pruned = forward(model, ids, press)
        own = torch.stack([press.kept[i] for i in range(len(press.kept))])
        gathered_error = 0.0
        for i, layer in enumerate(full.layers):
            index = own[i].long().unsqueeze(0).unsqueeze(-1).expand(-1, -1, -1, layer.keys.shape[-1])
            for a, b in ((pruned.layers[i].keys, layer.keys), (pruned.layers[i].values, layer.values)):
                gathered_error = max(gathered_error, float((a - b.gather(2, index)).abs().max()))
        reference = forward(model, ids, PRESSES[name](compression_ratio=ratio))
        mismatched, distance = 0, 0.0
        for i, layer in enumerate(full.layers):
            matched, far = matched_indices(reference.layers[i].keys, layer.keys)
            mismatched += int((matched != unprotected[name, ratio][i].long()).any(dim=-1).sum())
            distance = max(distance, far)
        checks[name, ratio] = {
            "same_as_own_forward": bool(torch.equal(own, captured)), "pruned_equals_gathered_max_abs": gathered_error,
            "prefix_kept": bool((captured[..., :prefix_len] == torch.arange(prefix_len)).all()),
            "entries": int(captured.shape[-1]),
            "expected_entries": prefix_len + int((ids.shape[1] - prefix_len) * (1 - ratio)),
            "plain_press_heads_mismatched": mismatched, "plain_press_heads": captured.shape[0] * captured.shape[1],
            "plain_press_match_distance": distance}
    return checks


def load_model(folder: str):
    """The model in float32 (as our side reads it on CPU), sdpa attention, eval mode."""
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def run_chunks(args: argparse.Namespace) -> None:
    """Kept indices of every press and ratio, KVzip's, and the quantized cache's KV, for every chunk."""
    model = load_model(args.model)
    chunks = read_jsonl(args.chunks)
    args.out.mkdir(parents=True, exist_ok=True)
    first = torch.tensor([chunks[0]["input_ids"]])
    with torch.no_grad():
        logits = model(input_ids=first).logits[0].float()
    save_file({"logits": logits}, str(args.out / "logits.safetensors"))
    manifest: dict = {"versions": {"transformers": transformers.__version__, "torch": torch.__version__},
                      "capture_seconds_per_chunk": 0.0, "configs": {}}
    for (name, ratio), checks in verify(model, first, chunks[0]["prefix_len"]).items():
        manifest["configs"][f"{name} r{ratio}"] = {"verify": checks}
        print(f"{name} {ratio}: {checks}", flush=True)
    for chunk in chunks:
        started = time.perf_counter()
        captured = all_indices(model, torch.tensor([chunk["input_ids"]]), chunk["prefix_len"])
        manifest["capture_seconds_per_chunk"] += (time.perf_counter() - started) / len(chunks)
        for (name, ratio), indices in captured.items():
            folder = args.out / f"{name} r{ratio}"
            folder.mkdir(exist_ok=True)
            save_file({"indices": indices.contiguous()}, str(folder / f"{chunk['case_id']}.safetensors"))
    if not args.skip_kvzip:
        run_kvzip(model, chunks, args.out, manifest)
    for bits in QUANTO_BITS:
        entry = manifest["configs"].setdefault(f"quanto {bits} bits", {"seconds": 0.0, "cases": 0, "bytes": {}})
        folder = args.out / f"quanto {bits} bits"
        folder.mkdir(exist_ok=True)
        for chunk in chunks:
            started = time.perf_counter()
            kv, per_token, entry["info"] = quantized_kv(model, torch.tensor([chunk["input_ids"]]), bits,
                                                        chunk["prefix_len"])
            entry["seconds"] += time.perf_counter() - started
            entry["cases"] += 1
            entry["bytes"][chunk["case_id"]] = per_token
            save_file({k: v.contiguous() for k, v in kv.items()}, str(folder / f"{chunk['case_id']}.safetensors"))
        print(f"quanto {bits} bits: {entry['info']}", flush=True)
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")


def run_kvzip(model, chunks: list[dict], out: Path, manifest: dict) -> None:
    """KVzip's scores once per chunk (they do not depend on the ratio), then its kept entries at every ratio."""
    seconds = 0.0
    scores = {}
    for chunk in chunks:
        started = time.perf_counter()
        scores[chunk["case_id"]] = kvzip_scores(model, torch.tensor([chunk["input_ids"]]))
        seconds += time.perf_counter() - started
    for ratio in RATIOS:
        manifest["configs"][f"KVzip r{ratio}"] = {"seconds": seconds, "cases": len(chunks)}
        folder = out / f"KVzip r{ratio}"
        folder.mkdir(exist_ok=True)
        for chunk in chunks:
            indices = keep_top(scores[chunk["case_id"]], chunk["prefix_len"], ratio).to(torch.int32)
            save_file({"indices": indices.contiguous()}, str(folder / f"{chunk['case_id']}.safetensors"))
    print(f"KVzip: {seconds / len(chunks):.1f} s a chunk", flush=True)


def run_pipeline(args: argparse.Namespace) -> None:
    """kvpress's own pipeline on whole cases: one JSON line per case and press."""
    pipe = pipeline("kv-press-text-generation", model=args.model, device="cpu", dtype="auto")
    cases = read_jsonl(args.cases)
    with open(args.out, "w", encoding="utf-8") as log:
        for name, make in PIPELINE_PRESSES.items():
            for case in cases:
                started = time.perf_counter()
                answer = pipe(case["context"], question="\n" + case["question"],
                              press=None if make is None else make())["answer"]
                log.write(json.dumps({"config": name, "case_id": case["case_id"], "answer": answer,
                                      "seconds": time.perf_counter() - started}) + "\n")
                log.flush()
            print(f"pipeline {name}: done", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    chunks = commands.add_parser("chunks")
    chunks.add_argument("--chunks", type=Path, required=True)
    chunks.add_argument("--model", required=True)
    chunks.add_argument("--out", type=Path, required=True)
    chunks.add_argument("--skip-kvzip", action="store_true")
    whole = commands.add_parser("pipeline")
    whole.add_argument("--cases", type=Path, required=True)
    whole.add_argument("--model", required=True)
    whole.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(0)
    if args.command == "chunks":
        run_chunks(args)
    else:
        run_pipeline(args)


if __name__ == "__main__":
    main()
