"""Side by side with NVIDIA kvpress on SmolLM2-135M-Instruct, over seeded `niah_single` cases.

Two levels (`--levels`):

- `chunk`: compression quality on the chunk that holds the needle (as `quantized_blocks.py`). kvpress runs in
  its own venv (`benchmarks/peers/kvpress/setup.sh`; it pins transformers<5.3) on the same input ids (the bank's
  prefix, then the chunk): `peers/kvpress/presses.py` reports which entries each press keeps per layer and KV
  head (the prefix kept whole, only the chunk compressed), and the chunk's KV as kvpress's quantized cache
  stores it. Here every press's entries are gathered from OUR block of the chunk (keys, values, positions), so
  only the choice of entries differs, and every block is read by the same reader (`ReadingConfig("compressed")`,
  greedy) and scored by substring match. Bytes per chunk token: a press's block at bf16 (2 bytes a value) plus
  4 bytes a position per entry, layer and head; ours by the same count (codes, float16 scales and zero points
  when quantized; a 16-bit block is stored as float32 on this CPU and counted at bf16); the quantized cache by
  what it stores (codes, a scale and zero point per group at 2 bytes, no positions), all against the chunk's
  KV in bf16.
- `e2e`: whole cases: kvpress's own pipeline (no press, Knorm 2x, SnapKV 2x) against compressmem's default
  `model.answer(question, context=...)`.

The chunk level first checks that both venvs load the model alike: logits of the first chunk's ids, max abs difference.

Reads go `--batch` cases at a time, one bank per row (the reader decodes each row as it would alone).

    bash benchmarks/peers/kvpress/setup.sh
    python benchmarks/kvpress_compare.py --length 4k --n 20 --levels chunk --out benchmarks/results/kvpress-4k
    python benchmarks/kvpress_compare.py --length 4k --n 20 --levels e2e --out benchmarks/results/kvpress-4k/e2e
    python benchmarks/kvpress_compare.py --length 32k --n 20 --levels chunk --out benchmarks/results/kvpress-32k
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

PEER = Path(__file__).resolve().parent / "peers" / "kvpress"
PEER_PYTHON = PEER / ".venv" / "bin" / "python"
PRESSES = ("Knorm", "SnapKV", "ExpectedAttention", "StreamingLLM", "TOVA", "KVzip")
RATIOS = {0.5: "2x", 0.75: "4x"}
QUANTO_BITS = (4, 2)
LOGITS_TOLERANCE = 1e-3


@dataclasses.dataclass
class Row:
    """One configuration's cases: found, and the bytes per chunk token of each (None: re-read, no KV kept)."""

    name: str
    found: list[float] = dataclasses.field(default_factory=list)
    bytes_per_token: list[float] = dataclasses.field(default_factory=list)

    def line(self, bf16: float) -> str:
        found = f"{int(sum(self.found))}/{len(self.found)}"
        if not self.bytes_per_token:
            return f"| {self.name} | {found} | — | — |"
        per_token = sum(self.bytes_per_token) / len(self.bytes_per_token)
        return f"| {self.name} | {found} | {per_token:.0f} | {per_token / bf16:.3f} |"


def peer(command: str, *args: str) -> None:
    """Run `presses.py command args` in kvpress's venv."""
    if not PEER_PYTHON.exists():
        raise SystemExit(f"{PEER_PYTHON} is missing: run `bash {PEER / 'setup.sh'}` first.")
    subprocess.run([str(PEER_PYTHON), str(PEER / "presses.py"), command, *args], check=True)


def write_jsonl(path: Path, lines: list[dict]) -> None:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")


def block_bytes(block) -> float:
    """Bytes per chunk token of a block: packed codes with their scales when quantized, else 2 bytes a value;
    4 bytes a position."""
    from compressmem.quantize import Quantized

    kv = sum(t.nbytes if isinstance(t, Quantized) else t.numel() * 2 for t in (block.keys, block.values))
    return (kv + 4 * block.positions.numel()) / block.num_tokens


def read_all(model, cases, banks, batch: int) -> list[tuple[float, str]]:
    """Whether the reader finds each case's needle in its bank (one block, read compressed), and its answer; `batch`
    cases at a time, one bank per row (rows left-padded: `generate` reads each row as it would alone)."""
    from compressmem.eval import substring_match

    results = []
    for first in range(0, len(cases), batch):
        rows = [model.prompt_ids(case.question)[0] for case in cases[first:first + batch]]
        width = max(row.numel() for row in rows)
        ids = torch.full((len(rows), width), model.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, row in enumerate(rows):
            ids[i, width - row.numel():], mask[i, width - row.numel():] = row, 1
        out = model.generate(ids, attention_mask=mask, bank=banks[first:first + batch], max_new_tokens=32,
                             do_sample=False)
        answers = [model.tokenizer.decode(row[width:], skip_special_tokens=True) for row in out]
        results += [(substring_match(answer, case.answers), answer.strip())
                    for case, answer in zip(cases[first:first + batch], answers)]
    return results


def gathered(bank, indices: torch.Tensor):
    """`bank` with its block cut to the entries at `indices` `[layers, kv_heads, m]` into prefix + chunk (the
    prefix's entries, kept whole in the bank's prefix, are dropped here)."""
    from compressmem import MemoryBank

    block = bank.blocks[0]
    prefix_len = bank.prefix_ids.numel()
    if indices.shape[0] != block.keys.shape[0] or not (indices[..., :prefix_len] == torch.arange(prefix_len)).all():
        raise ValueError("the press's indices must cover every layer of the block and keep the whole prefix")
    local = indices[..., prefix_len:].long() - prefix_len
    entries = local.unsqueeze(-1).expand(-1, -1, -1, block.keys.shape[-1])
    cut = dataclasses.replace(block, keys=block.keys.gather(2, entries), values=block.values.gather(2, entries),
                              positions=block.positions.gather(2, local))
    return MemoryBank.from_blocks([cut], bank.prefix, bank.provenance)


def replaced(bank, kv: dict[str, torch.Tensor]):
    """`bank` with its block's keys and values replaced (same entries and positions)."""
    from compressmem import MemoryBank

    block = bank.blocks[0]
    if kv["keys"].shape != block.keys.shape:
        raise ValueError(f"peer KV {tuple(kv['keys'].shape)} does not match the block's {tuple(block.keys.shape)}")
    cut = dataclasses.replace(block, keys=kv["keys"].to(block.keys.dtype), values=kv["values"].to(block.values.dtype))
    return MemoryBank.from_blocks([cut], bank.prefix, bank.provenance)


def reading_config():
    """Our block of the whole chunk (method none), read compressed: the reader every press block goes through."""
    from compressmem import ChunkingConfig, CompressionConfig, MemoryConfig, NotesConfig, ReadingConfig

    return MemoryConfig(chunking=ChunkingConfig(512), compression=CompressionConfig("none"), gate=None,
                        reading=ReadingConfig("compressed"), notes=NotesConfig(note_tokens=48))


def our_configurations(group: int) -> list[tuple[str, object]]:
    """compressmem's rows: raw re-read, method none at 8/4/2 bits, select at ratio 2 and 4 at 16 and 4 bits."""
    from quantized_blocks import configurations

    rows = list(configurations(["raw", "none"], [8, 4, 2], group))
    rows += list(configurations(["select r2", "select r4"], [16, 4], group))
    return [(f"compressmem: {name}", config) for name, config in rows]


def logits_check(model, work: Path, input_ids: list[int]) -> float:
    """Max abs difference between our logits and the peer venv's on the first chunk's ids."""
    theirs = load_file(str(work / "peer" / "logits.safetensors"))["logits"]
    with torch.no_grad():
        ours = model.model(input_ids=torch.tensor([input_ids], device=model.model.device)).logits[0].float().cpu()
    return float((ours - theirs).abs().max())


def per_chunk(base, cases, work: Path, log, batch: int, reuse: bool) -> tuple[list[Row], list[str]]:
    """The chunk level: every kvpress press and ratio and its quantized cache, then our rows, on one reader
    (`reuse`: the peer's outputs already in `work`, from a run on the same cases)."""
    from quantized_blocks import evidence_chunk

    from compressmem import CompressionConfig
    from compressmem.embedded import resolve_model_source

    model = base.with_config(reading_config(), show_progress=False)
    chunks = {case.case_id: evidence_chunk(model, case) for case in cases}
    prefix = model.builder.prefix_ids
    inputs = {case_id: torch.cat([prefix, chunk.token_ids]).tolist() for case_id, chunk in chunks.items()}
    write_jsonl(work / "chunks.jsonl", [{"case_id": case_id, "prefix_len": prefix.numel(), "input_ids": ids}
                                        for case_id, ids in inputs.items()])
    if not reuse:
        peer("chunks", "--chunks", str(work / "chunks.jsonl"), "--model", resolve_model_source(base.base_name),
             "--out", str(work / "peer"))
    manifest = json.loads((work / "peer" / "manifest.json").read_text(encoding="utf-8"))
    first = inputs[cases[0].case_id]
    difference = logits_check(model, work, first)
    notes = [f"logits of our venv against kvpress's venv on the same ids (first chunk, {len(first)} tokens): max abs "
             f"difference {difference:.2e}; kvpress's venv: {manifest['versions']}"]
    print(notes[0], flush=True)
    if difference > LOGITS_TOLERANCE:
        raise SystemExit(f"the two venvs disagree on the model's logits by {difference:.2e}: fix the peer's config")
    rows = []
    blocks = {case.case_id: model.builder.bank([chunks[case.case_id]], model.model.device, show_progress=False)
              for case in cases}
    for press in PRESSES:
        for ratio, label in RATIOS.items():
            folder = work / "peer" / f"{press} r{ratio}"
            if folder.exists():
                rows.append(run_row(f"kvpress: {press} {label}, bf16", cases, log, model, lambda case, f=folder: (
                    gathered(blocks[case.case_id], load_file(str(f / f"{case.case_id}.safetensors"))["indices"])),
                    batch=batch))
    for bits in QUANTO_BITS:
        folder, stored = work / "peer" / f"quanto {bits} bits", manifest["configs"][f"quanto {bits} bits"]["bytes"]
        rows.append(run_row(f"kvpress: QuantizedCache (quanto) {bits} bits", cases, log, model, lambda case, f=folder: (
            replaced(blocks[case.case_id], load_file(str(f / f"{case.case_id}.safetensors")))),
            lambda case, bank, s=stored: s[case.case_id], batch))
    rows += [our_row(base, name, config, cases, chunks, log, batch) for name, config in our_configurations(64)]
    notes += peer_notes(manifest)
    select = base.with_config(dataclasses.replace(reading_config(), compression=CompressionConfig("select", 2.0)),
                              show_progress=False)
    notes.append(agreement(select, chunks, work))
    return rows, notes


def our_row(base, name: str, config, cases, chunks: dict, log, batch: int) -> Row:
    """compressmem's own block of each case's chunk under `config` (raw: token ids only, re-read)."""
    model = base.with_config(config, show_progress=False)
    measure = (lambda case, bank: None) if config.reading.mode == "raw" else None
    return run_row(name, cases, log, model, lambda case: model.builder.bank([chunks[case.case_id]], model.model.device,
                                                                           show_progress=False), measure, batch)


def run_row(name: str, cases, log, model, make_bank, measure=None, batch: int = 10) -> Row:
    """Read every case's bank `make_bank(case)` with `model`, its bytes per chunk token `measure(case, bank)`
    (default: `block_bytes` of its block; None: no KV); log each case, print the tally."""
    started = time.perf_counter()
    banks = [make_bank(case) for case in cases]
    row = Row(name)
    for case, bank, (found, answer) in zip(cases, banks, read_all(model, cases, banks, batch)):
        per_token = block_bytes(bank.blocks[0]) if measure is None else measure(case, bank)
        row.found.append(found)
        if per_token is not None:
            row.bytes_per_token.append(per_token)
        log.write(json.dumps({"level": "chunk", "config": name, "case_id": case.case_id, "correct": found,
                              "answer": answer, "bytes_per_token": per_token}) + "\n")
    log.flush()
    print(f"{name}: {int(sum(row.found))}/{len(cases)} ({(time.perf_counter() - started) / len(cases):.1f} s a case)",
          flush=True)
    return row


def peer_notes(manifest: dict) -> list[str]:
    """Lines on the peer's side: seconds per chunk, the checks of the captured indices, the quantized cache."""
    seconds = manifest["capture_seconds_per_chunk"]
    lines = [f"the peer captures every press at every ratio from one forward: {seconds:.1f} s a chunk"]
    for name, entry in manifest["configs"].items():
        line = name + (f": {entry['seconds'] / entry['cases']:.1f} s a chunk on the peer side" if "seconds" in entry
                       else "")
        if "verify" in entry:
            line += f"; check on the first case: {json.dumps(entry['verify'])}"
        if "info" in entry:
            line += f"; {json.dumps(entry['info'])}"
        lines.append(line)
    return lines


def agreement(model, chunks: dict, work: Path) -> str:
    """How often kvpress's Knorm 2x and `model`'s select (ratio 2, score keynorm) keep the same chunk entries of a
    layer and head: both rank by key norm, so they should agree up to float noise between the two venvs."""
    same, total = 0, 0
    for case_id, chunk in chunks.items():
        mine = model.builder.bank([chunk], model.model.device, show_progress=False).blocks[0].positions
        theirs = load_file(str(work / "peer" / "Knorm r0.5" / f"{case_id}.safetensors"))["indices"]
        theirs = theirs[..., model.builder.prefix_ids.numel():]
        if theirs.shape == mine.shape:
            same += int((theirs == mine).all(dim=-1).sum())
        total += mine.shape[0] * mine.shape[1]
    return (f"kvpress Knorm 2x and compressmem select r2 (score {model.memory_config.compression.score}) keep the "
            f"same chunk entries in {same}/{total} layer-heads over {len(chunks)} chunks")


def end_to_end(model, cases, work: Path, log) -> list[Row]:
    """Whole cases: kvpress's pipeline (no press, Knorm 2x, SnapKV 2x) and `model`'s default `answer`."""
    from compressmem import DEFAULT_MODEL
    from compressmem.embedded import resolve_model_source
    from compressmem.eval import substring_match

    by_id = {case.case_id: case for case in cases}
    write_jsonl(work / "cases.jsonl", [{"case_id": case.case_id, "context": case.context, "question": case.question}
                                       for case in cases])
    peer("pipeline", "--cases", str(work / "cases.jsonl"), "--model", resolve_model_source(DEFAULT_MODEL),
         "--out", str(work / "pipeline.jsonl"))
    rows: dict[str, Row] = {}
    for line in (work / "pipeline.jsonl").read_text(encoding="utf-8").splitlines():
        result = json.loads(line)
        name = f"kvpress pipeline (its defaults: max_new_tokens 50): {result['config']}"
        found = substring_match(result["answer"], by_id[result["case_id"]].answers)
        rows.setdefault(name, Row(name)).found.append(found)
        log.write(json.dumps({"level": "e2e", **result, "config": name, "correct": found}) + "\n")
    row = Row("compressmem default: model.answer(question, context=...) (its defaults: max_new_tokens 128)")
    for case in cases:
        started = time.perf_counter()
        answer = model.answer(case.question, context=case.context)
        row.found.append(substring_match(answer, case.answers))
        log.write(json.dumps({"level": "e2e", "config": row.name, "case_id": case.case_id, "answer": answer,
                              "seconds": time.perf_counter() - started, "correct": row.found[-1]}) + "\n")
    log.flush()
    return [*rows.values(), row]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--length", default="4k")
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--levels", default="chunk,e2e", help="chunk, e2e or both")
    parser.add_argument("--batch", type=int, default=20, help="cases read together, one bank per row")
    parser.add_argument("--work", type=Path, help="folder for the exchange with the peer (default: a temporary one)")
    parser.add_argument("--reuse-peer", action="store_true", help="the peer's outputs already in --work (same cases)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    from quantized_blocks import bf16_bytes_per_token

    from compressmem import DEFAULT_MODEL, CompressedMemoryModel
    from compressmem.eval import make_cases, parse_token_counts

    base = CompressedMemoryModel.from_pretrained(DEFAULT_MODEL, show_progress=False)
    length = parse_token_counts(args.length)[0]
    cases = make_cases("niah_single", base.tokenizer, length, args.n, args.seed)
    bf16 = bf16_bytes_per_token(base)
    levels = args.levels.split(",")
    args.out.mkdir(parents=True, exist_ok=True)
    text = [f"SmolLM2-135M-Instruct, CPU, float32; niah_single at {length} tokens, n={len(cases)}, seed {args.seed}; "
            f"bf16 KV = {bf16} bytes a chunk token"]
    with tempfile.TemporaryDirectory(prefix="kvpress-compare-") as scratch, \
            open(args.out / "cases.jsonl", "w", encoding="utf-8") as log:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        if "chunk" in levels:
            rows, notes = per_chunk(base, cases, work, log, args.batch, args.reuse_peer)
            rows.sort(key=lambda row: -sum(row.bytes_per_token) / max(len(row.bytes_per_token), 1) if
                      row.bytes_per_token else float("-inf"))
            text += ["", "Per chunk: the needle's chunk (chunks of 512 tokens) as one block, read compressed by one "
                     "reader (notes, then the answer, greedy)", "",
                     "| configuration | needle found | bytes per chunk token | vs bf16 KV |", "|---|---|---|---|",
                     *(row.line(bf16) for row in rows), "", *(f"- {note}" for note in notes)]
            (args.out / "summary.md").write_text("\n".join(text) + "\n", encoding="utf-8")
        if "e2e" in levels:
            rows = end_to_end(base, cases, work, log)
            text += ["", "End to end: whole cases", "", "| configuration | needle found |", "|---|---|",
                     *(f"| {row.name} | {int(sum(row.found))}/{len(row.found)} |" for row in rows)]
    (args.out / "summary.md").write_text("\n".join(text) + "\n", encoding="utf-8")
    print("\n" + "\n".join(text))


if __name__ == "__main__":
    main()
