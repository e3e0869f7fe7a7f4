"""Peer side of the LycheeMemory parity test: the authors' compression forward, run by their own code.

Runs in this folder's own venv (`setup.sh`: torch 2.13.0, transformers 4.53.2, their requirements) against
their source (`owoakuma/LycheeMemory` at `COMMIT`, unpacked by `source.sh`). Never imports
compressmem: it writes safetensors and JSON that `tests/test_lychee_parity.py` reads on our side.

What it does:

1. builds a tiny random Qwen2 in their layout (their `Qwen2Config` and `Qwen2ForCausalLM`, with the extra
   `lychee_memory_{q,k,v,o}_proj` projections and `lychee_memory_embed_tokens`), every extra tensor drawn at
   random so that none equals the base weight it sits beside (a compressor that used the base projection or
   embedding for memory tokens would then give different KV);
2. saves it with their `save_pretrained` (safetensors) and loads it again with their `from_pretrained`
   (which creates `model.memory`);
3. compresses each case's token ids with their `aggregate_text` (what their recurrent `generate` calls for
   every chunk) at the case's ratio, and writes the per-layer memory keys and values it returns;
4. runs their recurrent `generate` (greedy, their default update and answer prompts) on three texts of three
   chunks and questions, with a byte-level tokenizer (ids are bytes) and a plain chat template written beside
   the model, and records the answer and every token it chose on the way (each chunk's memory update, then
   the answer) by wrapping `generate_forward`, and the two prompt templates as their chat template formatted
   them (by wrapping their `TokenTemplate`); neither wrapper changes what their code computes.

Their eager and SDPA attention classes fail on this path (the rotary embedding of their eager class gets an
untransposed query), and their flash-attention class calls `flash_attn_func` / `flash_attn_varlen_func`,
which need a GPU. Every attention layer therefore runs their `Qwen2FlashAttention2.forward` unchanged, with
the flash-attention package's functions replaced, in their module only, by `standin_*` below: the same
function as flash-attn >= 2.1 computes (softmax(Q K^T / sqrt(d)) V, grouped-query heads, the causal mask
aligned bottom-right when there are more keys than queries, sequences of a varlen batch kept apart), written
out in float32 torch. Flash attention computes that function exactly (it is not an approximation, only a
tiled order of summation), so the stand-in changes rounding only. The padding helpers `index_first_axis`,
`unpad_input` and `pad_input` of `flash_attn.bert_padding` are replaced by the same gathers and scatters.

    bash benchmarks/peers/lycheememory/setup.sh
    bash benchmarks/peers/lycheememory/source.sh /path/to/LycheeMemory  # a clone or a bare git dir
    benchmarks/peers/lycheememory/.venv/bin/python benchmarks/peers/lycheememory/parity.py \\
        --source benchmarks/peers/lycheememory/.venv/lycheememory-source --out tests/fixtures/lycheememory
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from pathlib import Path

import torch
import transformers
from safetensors.torch import save_file

COMMIT = "e4b93d8fa09c1258a14c708d75551d2bca58c446"

# Tiny model: byte-level ids (0..255), grouped-query attention (4 query heads over 2 KV heads).
CONFIG = {
    "vocab_size": 256,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": None,  # their memory embedding has one row: any other padding index fails
    "lychee_memory_window": 32,
    "lychee_memory_stride": 32,
    "lychee_memory_ratio": [2, 4, 8],
    "lychee_memory_param": ["q", "k", "v", "o"],
    "lychee_memory_pos": "interleave",
    "lychee_memory_attn": "full-coverage",
    "lychee_memory_ratio_mix": "step-random",
    "lychee_memory_embed_init": "eos",
    "lychee_memory_sink_size": 0,
    "lychee_memory_attend_prev": True,
    "lychee_memory_parallel_window": 1,
}

TEXTS = [
    "The lighthouse keeper wrote every storm into a ledger: wind, hour, ships seen.",
    "Mara Quill was born in Port Sallow in 1871 and buried at Greyhaven, far from the sea she drew all her "
    "life; her charts of the northern shoals are still used by the harbour pilots.",
    "Vault 7 opens with the combination 31-04-88.",
    "A compressed memory keeps one entry for every few tokens of a chunk.",
]

# (name, text index, tokens, ratio, padded length or None): the text's first `tokens` bytes. Unpadded cases
# fill whole windows (their `aggregate_text` keeps no memory of a last window it has not filled); a padded
# case pads its ids to that length with an attention mask of 0, as their recurrent `generate` pads the last
# chunk of a text to `stream_chunk_size`, and its last window is partly filled.
CASES = [
    ("two_windows_ratio4", 0, 64, 4, None),
    ("five_windows_ratio2", 1, 160, 2, None),
    ("one_window_ratio8", 2, 32, 8, None),
    ("padded_ratio4", 3, 68, 4, 96),
    ("padded_ratio2", 2, 44, 2, 64),
]


# --- stand-ins for flash-attn's functions (see the module docstring) --------------------------------------


CALLS: Counter[str] = Counter()  # how often each stand-in ran: proof that their flash path was taken


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, causal: bool) -> torch.Tensor:
    """One sequence: q `[s_q, h, d]`, k and v `[s_k, h_kv, d]` -> `[s_q, h, d]`, causal mask bottom-right."""
    groups = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(groups, dim=1)
    v = v.repeat_interleave(groups, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q.float(), k.float()) * scale
    if causal:
        s_q, s_k = q.shape[0], k.shape[0]
        allowed = torch.arange(s_k)[None, :] <= torch.arange(s_q)[:, None] + (s_k - s_q)
        scores = scores.masked_fill(~allowed, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    return torch.einsum("hqk,khd->qhd", weights, v.float()).to(q.dtype)


def standin_flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, **_):
    """flash_attn_func: `[b, s, h, d]` tensors, no padding."""
    CALLS["flash_attn_func"] += 1
    assert dropout_p == 0.0
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    return torch.stack([_attend(q[i], k[i], v[i], scale, causal) for i in range(q.shape[0])])


def standin_flash_attn_varlen_func(
    q,
    k,
    v,
    cu_seqlens_q,
    cu_seqlens_k,
    max_seqlen_q,
    max_seqlen_k,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    **_,
):
    """flash_attn_varlen_func: sequences packed along the first axis, delimited by `cu_seqlens_*`."""
    CALLS["flash_attn_varlen_func"] += 1
    assert dropout_p == 0.0
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    out = torch.empty_like(q)
    for i in range(cu_seqlens_q.numel() - 1):
        qs, qe = int(cu_seqlens_q[i]), int(cu_seqlens_q[i + 1])
        ks, ke = int(cu_seqlens_k[i]), int(cu_seqlens_k[i + 1])
        out[qs:qe] = _attend(q[qs:qe], k[ks:ke], v[ks:ke], scale, causal)
    return out


def standin_index_first_axis(x, indices):
    return x[indices]


def standin_unpad_input(hidden_states, attention_mask):
    seqlens = attention_mask.sum(dim=-1, dtype=torch.int32)
    indices = torch.nonzero(attention_mask.flatten(), as_tuple=False).flatten()
    cu_seqlens = torch.nn.functional.pad(torch.cumsum(seqlens, dim=0, dtype=torch.int32), (1, 0))
    flat = hidden_states.reshape(-1, *hidden_states.shape[2:])
    return flat[indices], indices, cu_seqlens, int(seqlens.max()), seqlens


def standin_pad_input(hidden_states, indices, batch, seqlen):
    out = hidden_states.new_zeros(batch * seqlen, *hidden_states.shape[1:])
    out[indices] = hidden_states
    return out.view(batch, seqlen, *hidden_states.shape[1:])


def install_standins(their_module, model) -> None:
    """Run their flash-attention class on the CPU: the stand-ins above in their module's namespace, every
    attention layer switched to `Qwen2FlashAttention2` (weights untouched: it only overrides `forward`), the
    flash-attn >= 2.1 mask alignment, and the configuration their memory reads (`_attn_implementation`)."""
    their_module.flash_attn_func = standin_flash_attn_func
    their_module.flash_attn_varlen_func = standin_flash_attn_varlen_func
    their_module.index_first_axis = standin_index_first_axis
    their_module.unpad_input = standin_unpad_input
    their_module.pad_input = standin_pad_input
    for layer in model.model.layers:
        layer.self_attn.__class__ = their_module.Qwen2FlashAttention2
        layer.self_attn._flash_attn_uses_top_left_mask = False
    model.config._attn_implementation = "flash_attention_2"


# --- the model ------------------------------------------------------------------------------------------


def build(source: Path, directory: Path, seed: int):
    sys.path.insert(0, str(source))
    from src import modeling_qwen2 as their
    from src.configuration_qwen2 import Qwen2Config

    torch.manual_seed(seed)
    config = Qwen2Config(**CONFIG)
    model = their.Qwen2ForCausalLM(config)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, tensor in model.named_parameters():
            # every weight random and of a visible size, so a wrong one changes the KV well above tolerance
            if "norm" in name:
                tensor.copy_(1.0 + 0.1 * torch.randn(tensor.shape, generator=generator))
            else:
                tensor.copy_(0.08 * torch.randn(tensor.shape, generator=generator))
    model.save_pretrained(directory, safe_serialization=True)
    loaded = their.Qwen2ForCausalLM.from_pretrained(directory, torch_dtype=torch.float32, attn_implementation="eager")
    loaded.eval()
    install_standins(their, loaded)
    return their, loaded


def byte_tokenizer(directory: Path):
    """A byte-level tokenizer whose ids are the bytes themselves (0..255, the tiny model's vocabulary), with a
    plain chat template (their recurrent `generate` formats its prompts through one); id 2 is end of text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

    chars = bytes_to_unicode()
    core = Tokenizer(models.BPE(vocab={chars[b]: b for b in range(256)}, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token=chars[2], pad_token=chars[2])
    tokenizer.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>\n{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<assistant>\n{% endif %}"
    )
    directory.mkdir(parents=True, exist_ok=True)
    core.save(str(directory / "tokenizer.json"))
    (directory / "chat_template.jinja").write_text(tokenizer.chat_template)
    return tokenizer


# Their recurrent generate: each case's text read chunk by chunk (stream_chunk_size = window, the last chunk
# padded) with their update prompt, then their answer prompt; greedy.
GENERATE = {"window": 512, "ratio": 4, "memory_size": 12, "max_new_tokens": 12}
QUESTIONS = [
    (1, "Where was Mara Quill buried?"),
    (0, "What did the keeper write into the ledger?"),
    (2, "What is the combination of vault 7?"),
]


def long_text(index: int) -> str:
    """A text of three chunks (1300 bytes: two full chunks of 512 and a padded one) around one of TEXTS."""
    filler = " ".join(t for i, t in enumerate(TEXTS) if i != index)
    text = (filler + " ") * 8
    return (text[:640] + " " + TEXTS[index] + " " + text[640:])[:1300]


PROMPTS: list[str] = []  # their recurrent generate's prompt templates, as its chat template formatted them


def generate(model, tokenizer, text: str, question: str) -> tuple[list[int], list[int]]:
    """Their recurrent generate's answer ids, and every token it chose greedily on the way (each chunk's memory
    update, then the answer), recorded by wrapping `generate_forward` (its outputs are returned untouched)."""
    chosen: list[int] = []
    original = model.generate_forward

    def recording(*args, **kwargs):
        outputs = original(*args, **kwargs)
        chosen.append(int(outputs.logits[0, -1].argmax()))
        return outputs

    model.generate_forward = recording
    import utils  # their src/utils.py (their modelling file puts src/ on sys.path and imports it so)

    templates: list[str] = []
    original_template = utils.TokenTemplate

    class RecordingTemplate(original_template):  # records the chat-formatted prompts their generate builds
        def __init__(self, template, tokenizer=None):
            templates.append(template)
            super().__init__(template, tokenizer)

    utils.TokenTemplate = RecordingTemplate
    model.memory.set(
        verbose=False,
        lychee_memory_window=GENERATE["window"],
        lychee_memory_stride=GENERATE["window"],
        lychee_memory_ratio=[GENERATE["ratio"]],
    )
    text_ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    question_ids = tokenizer(question, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = model.generate(
            input_ids=question_ids,
            attention_mask=torch.ones_like(question_ids),
            text_ids=text_ids,
            text_attention_mask=torch.ones_like(text_ids),
            stream_chunk_size=GENERATE["window"],
            max_new_tokens=GENERATE["max_new_tokens"],
            memory_size=GENERATE["memory_size"],
            do_sample=False,
            memory_mode="recurrent",
            tokenizer=tokenizer,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    del model.generate_forward
    utils.TokenTemplate = original_template
    PROMPTS[:] = templates[:2]  # their update prompt, then their answer prompt
    return out[0, question_ids.shape[1] :].tolist(), chosen


def compress(model, ids: torch.Tensor, mask: torch.Tensor, ratio: int):
    """Their compression of one chunk: `aggregate_text` at `ratio`, as their recurrent `generate` calls it."""
    model.memory.set(verbose=False, lychee_memory_ratio=[ratio])
    with torch.no_grad():
        cache, kv_mask = model.aggregate_text(text_ids=ids, text_attention_mask=mask, stream_chunk_size=0)
    layers = cache.to_legacy_cache() if hasattr(cache, "to_legacy_cache") else cache
    return [(k.clone(), v.clone()) for k, v in layers], kv_mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="their source tree (with src/) at COMMIT")
    parser.add_argument("--out", type=Path, required=True, help="fixture folder to write")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    model_dir = args.out / "model"
    _their, model = build(args.source.resolve(), model_dir, args.seed)
    # drop what save_pretrained writes beyond the weights and config (a generation config)
    for extra in model_dir.iterdir():
        if extra.name not in ("config.json", "model.safetensors"):
            extra.unlink()

    marker = args.source / "COMMIT"  # written by source.sh
    commit = marker.read_text().strip() if marker.exists() else "unknown (no COMMIT file: use source.sh)"

    print("# LycheeMemory parity: their compression forward on a tiny random Qwen2\n")
    print(f"- their source: owoakuma/LycheeMemory at {commit} (expected {COMMIT})")
    print(f"- transformers {transformers.__version__}, torch {torch.__version__}, CPU, float32")
    shown = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "vocab_size")
    print(f"- model: {json.dumps({k: CONFIG[k] for k in shown})}")
    print(
        f"- memory: window {CONFIG['lychee_memory_window']}, stride {CONFIG['lychee_memory_stride']}, "
        f"param {CONFIG['lychee_memory_param']}, pos {CONFIG['lychee_memory_pos']}, attn {CONFIG['lychee_memory_attn']}"
    )
    print(
        "- attention: their Qwen2FlashAttention2.forward with flash-attn's functions replaced by exact "
        "float32 torch stand-ins (bottom-right causal mask, grouped-query heads, varlen sequences apart)"
    )
    print()
    print(
        "| case | tokens | padded to | ratio | memory entries kept (kv_mask) | per layer keys shape | mean abs key "
        "| stand-in calls |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")

    tensors: dict[str, torch.Tensor] = {}
    cases = []
    for name, text_index, length, ratio, padded in CASES:
        text = TEXTS[text_index][:length]
        assert len(text) == length
        ids = torch.tensor([list(text.encode("utf-8"))], dtype=torch.long)
        mask = torch.ones_like(ids)
        if padded is not None:
            pad = padded - ids.shape[1]
            ids = torch.cat([ids, torch.zeros(1, pad, dtype=torch.long)], dim=1)
            mask = torch.cat([mask, torch.zeros(1, pad, dtype=torch.long)], dim=1)
        CALLS.clear()
        layers, kv_mask = compress(model, ids, mask, ratio)
        n = int(mask.sum())
        tensors[f"{name}.input_ids"] = ids[0, :n].clone()
        tensors[f"{name}.kv_mask"] = kv_mask[0].to(torch.int64).clone()
        for i, (k, v) in enumerate(layers):
            tensors[f"{name}.layer{i}.keys"] = k[0].contiguous()
            tensors[f"{name}.layer{i}.values"] = v[0].contiguous()
        cases.append({"name": name, "text": text, "ratio": ratio, "padded_to": padded, "tokens": n})
        mean_abs = sum(float(k.abs().mean()) for k, _ in layers) / len(layers)
        print(
            f"| {name} | {n} | {padded or '-'} | {ratio} | {int(kv_mask.sum())} of {kv_mask.shape[1]} "
            f"| {list(layers[0][0][0].shape)} | {mean_abs:.4f} | {dict(CALLS)} |"
        )

    tokenizer = byte_tokenizer(args.out / "tokenizer")
    answers = []
    print()
    print(f"Their recurrent generate (greedy), {json.dumps(GENERATE)}:")
    print()
    print("| text | question | text tokens | answer token ids | every greedy token (memory updates, answer) |")
    print("| --- | --- | --- | --- | --- |")
    for index, question in QUESTIONS:
        text = long_text(index)
        tokens, chosen = generate(model, tokenizer, text, question)
        answers.append({"text": text, "question": question, "answer_ids": tokens, "greedy_trace": chosen})
        print(f"| {index} | {question} | {len(text.encode())} | {tokens} | {chosen} |")

    save_file(tensors, str(args.out / "their_outputs.safetensors"), metadata={"commit": COMMIT})
    manifest = {
        "commit": COMMIT,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "cases": cases,
        "generate": {"settings": GENERATE, "prompts": PROMPTS, "answers": answers},
        "layout": "per case: input_ids (real tokens only), kv_mask over their memory entries, and per layer "
        "the memory keys (before RoPE, as their cache keeps them) and values, [kv_heads, entries, head_dim]",
    }
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"\nfixture: {args.out} ({size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
