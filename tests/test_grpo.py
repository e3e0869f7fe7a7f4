"""End-to-end GRPO: where the policy gradient goes, what the loss reads, and that training raises the reward."""

from collections import Counter

import pytest
import torch

from compressmem import (
    PromptConfig,
    ChunkingConfig,
    CompressedMemoryModel,
    CompressionConfig,
    MemoryConfig,
    NotesConfig,
    ReadingConfig,
)
from compressmem.compressors import LearnedCompressor
from compressmem.hf.checkpointing import activation_checkpointing
from compressmem.hf.compat import CHECKPOINTING_ATTRIBUTES, attention_implementation, has_input_grads_hook
from compressmem.training.grpo import (
    GRPOConfig,
    GRPOExample,
    GRPOTrainer,
    conversation_logprobs,
    examples_from_jsonl,
    micro_batches,
    sample_group,
    with_reasoner_adapter,
)
from compressmem.training.grpo_loss import clipped_policy_loss

from .conftest import tiny_model

# the toy reward of test_a_few_grpo_steps_raise_the_reward is set from the untrained policy's answers under this
# short answer prompt (release 0.3's default); the longer default spreads a tiny random model's first characters
CONFIG = MemoryConfig(chunking=ChunkingConfig(64), compression=CompressionConfig("learned", ratio=4), gate=None,
                      reading=ReadingConfig("compressed", until="all"), notes=NotesConfig(note_tokens=4),
                      prompts=PromptConfig(answer_template="Notes taken while reading a long document: {notes}\n\n"
                                                           "{question}"))
EXAMPLE = GRPOExample("What is the vault code?", "The lighthouse keeper wrote the vault code 4719283. " * 8,
                      ("4719283",))


def _policy(tokenizer, seed=0, perturb=True, **overrides):
    """A tiny model with a learned compressor and a reasoner adapter, moved away from their zero start
    when `perturb` (so that every adapter weight gets a gradient)."""
    model = tiny_model("llama", tokenizer, seed, **overrides)
    compressor = LearnedCompressor.initialise(model, CONFIG.compression.ratio, CONFIG.chunking.size, seed=seed)
    policy = with_reasoner_adapter(CompressedMemoryModel(model, tokenizer, memory_config=CONFIG, base_name="tiny",
                                                         show_progress=False, compressor=compressor), seed=seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if perturb and "lora_B" in name:
                weight.normal_(0, 0.05, generator=generator)
    return policy


def _rollouts(policy, group_size=4, seed=0):
    torch.manual_seed(seed)
    return sample_group(policy, EXAMPLE, GRPOConfig(group_size=group_size, max_new_tokens=5), lambda p, a: 0.0)


def test_a_rollout_is_every_update_then_the_answer(tokenizer):
    group = _rollouts(_policy(tokenizer))
    blocks = len(group.conversations) // 4 - 1
    assert blocks >= 2  # gate off: every block is read, in order, by each of the 4 rollouts
    for rollout in range(4):
        mine = [c for c in group.conversations if c.rollout == rollout]
        assert [c.block for c in mine] == [*range(blocks), None]
        assert all(0 < c.output_ids.numel() <= 5 for c in mine)
    batches = micro_batches(group.conversations, size=3)
    assert [len(b) for b in batches] == [4] * blocks + [3, 1]
    assert all(len({c.block for c in batch}) == 1 for batch in batches)


def test_loss_reads_the_same_tokens_the_rollout_generated(tokenizer):
    policy = _policy(tokenizer)
    group = _rollouts(policy)
    update = [c for c in group.conversations if c.block == 1]
    answer = [c for c in group.conversations if c.block is None]
    with torch.no_grad():
        recomputed, mask = conversation_logprobs(policy, update, recompute_block=True)
        from_bank, _ = conversation_logprobs(policy, update, recompute_block=False)
        answer_logprobs, answer_mask = conversation_logprobs(policy, answer[:1])
        with policy.reasoner.active():
            sequence = torch.cat([answer[0].prompt_ids, answer[0].output_ids])
            direct = torch.log_softmax(policy.model(sequence[None]).logits[0, :-1].float(), -1)
    torch.testing.assert_close(recomputed, from_bank, rtol=1e-4, atol=1e-4)  # the block made with gradients
    assert mask.sum(dim=1).tolist() == [c.output_ids.numel() for c in update]
    outputs = answer[0].output_ids.numel()
    expected = direct[-outputs:].gather(-1, answer[0].output_ids[:, None]).squeeze(-1)
    torch.testing.assert_close(answer_logprobs[0][answer_mask[0]], expected, rtol=1e-4, atol=1e-4)


def test_the_loss_recomputes_exactly_the_log_probabilities_the_rollouts_sampled_with(tokenizer):
    """Every conversation (each read, with its block recomputed by the compressor, and each answer) is scored
    through the reader's own step function on the inputs the trace recorded: the log-probabilities of the
    sampled tokens are those the rollout's sampler saw."""
    policy = _policy(tokenizer)
    group = _rollouts(policy)
    checked = 0
    for batch in micro_batches(group.conversations, size=4):
        with torch.no_grad():
            logprobs, mask = conversation_logprobs(policy, batch, recompute_block=True)
        for row, conversation in enumerate(batch):
            torch.testing.assert_close(logprobs[row][mask[row]], conversation.sampled_logprobs, atol=1e-4, rtol=1e-4)
            checked += conversation.output_ids.numel()
    assert checked == sum(c.output_ids.numel() for c in group.conversations) > 20


def test_policy_gradient_reaches_compressor_and_reasoner_but_not_the_base(tokenizer):
    policy = _policy(tokenizer)
    group = _rollouts(policy)
    weights = policy.compressor.weights(policy.model) + policy.reasoner_adapter.weights(policy.model)
    for weight in policy.model.parameters():
        weight.requires_grad_(False)
    for weight in weights:
        weight.requires_grad_(True)
    update = [c for c in group.conversations if c.block == 0]
    logprobs, mask = conversation_logprobs(policy, update)
    clipped_policy_loss(logprobs, logprobs.detach(), torch.tensor([1.0, -1.0, 0.5, -0.5]), mask).backward()
    assert policy.compressor.memory_embeddings.grad.abs().sum() > 0
    named = dict(policy.model.named_parameters())
    compressor_lora = [w for n, w in named.items() if "compressmem_compressor" in n and "lora_A" in n]
    reasoner_lora = [w for n, w in named.items() if "compressmem_reasoner" in n and "lora_A" in n]
    assert any(w.grad is not None and w.grad.abs().sum() > 0 for w in compressor_lora)
    assert any(w.grad is not None and w.grad.abs().sum() > 0 for w in reasoner_lora)
    assert all(w.grad is None for n, w in named.items() if "lora_" not in n)


def test_activation_checkpointing_gives_the_same_gradients(tokenizer):
    policy = _policy(tokenizer)
    group = _rollouts(policy)
    update = [c for c in group.conversations if c.block == 0]
    weights = policy.compressor.weights(policy.model) + policy.reasoner_adapter.weights(policy.model)
    for weight in weights:
        weight.requires_grad_(True)
    grads = []
    for checkpointing in (False, True):
        for weight in weights:
            weight.grad = None
        with activation_checkpointing(policy.model, checkpointing):
            logprobs, mask = conversation_logprobs(policy, update)
            clipped_policy_loss(logprobs, logprobs.detach(), torch.tensor([1.0, -1.0, 0.5, -0.5]), mask).backward()
        grads.append([torch.zeros_like(w) if w.grad is None else w.grad.clone() for w in weights])
    assert grads[0][0].abs().sum() > 0
    for plain, checkpointed in zip(*grads):
        torch.testing.assert_close(checkpointed, plain, rtol=1e-4, atol=1e-6)


def test_a_few_grpo_steps_raise_the_reward(tokenizer, tmp_path):
    """The toy reward: the answer starts with one of the characters the untrained policy starts ~1 in 4
    answers with. Rewards before and after are measured on 32 rollouts with the same seed."""
    policy = _policy(tokenizer, perturb=False, initializer_range=0.2)
    starts = Counter(p[:1] for p in _rollouts(policy, group_size=32, seed=7).predictions)
    chosen, count = set(), 0
    for character, n in starts.most_common():
        if count >= 8:
            break
        chosen.add(character)
        count += n

    def reward(prediction, answers):
        return float(prediction[:1] in chosen)

    def mean_reward():
        torch.manual_seed(123)
        return sample_group(policy, EXAMPLE, GRPOConfig(group_size=32, max_new_tokens=6), reward).rewards.mean()

    before = mean_reward()
    config = GRPOConfig(steps=16, questions_per_step=1, group_size=8, max_new_tokens=6, learning_rate=2e-2,
                        save_every=8)
    log = GRPOTrainer(policy, [EXAMPLE], tmp_path / "run", config, reward, show_progress=False).train()
    after = mean_reward()
    assert after > before + 0.3, (before, after, [e["reward"] for e in log])
    assert [e["step"] for e in log] == list(range(1, 17))
    assert (tmp_path / "run" / "grpo_log.png").is_file() and (tmp_path / "run" / "reasoner").is_dir()


def test_the_trainer_puts_the_users_model_back_as_it_found_it(tokenizer, tmp_path):
    """Which weights learn, train or eval mode, checkpointing flags and the attention implementation: all as before."""
    policy = _policy(tokenizer)
    base = policy.model
    base.model.embed_tokens.weight.requires_grad_(True)  # the user's own choice, for their own training
    before = {name: weight.requires_grad for name, weight in base.named_parameters()}
    layers = [m for m in base.modules() if hasattr(m, "gradient_checkpointing")]
    config = GRPOConfig(steps=1, questions_per_step=1, group_size=2, max_new_tokens=3, gradient_checkpointing=True,
                        save_every=1)
    GRPOTrainer(policy, [EXAMPLE], tmp_path / "run", config, lambda p, a: float(len(p) % 2),
                show_progress=False).train()
    assert {name: weight.requires_grad for name, weight in base.named_parameters()} == before
    assert not base.training and not any(m.gradient_checkpointing for m in layers)
    assert not any(name in vars(m) for m in layers for name in CHECKPOINTING_ATTRIBUTES[1:])
    assert attention_implementation(base) == "sdpa" and not has_input_grads_hook(base)


def test_grpo_checks_its_inputs(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="group_size must be at least 2"):
        GRPOConfig(group_size=1)
    with pytest.raises(ValueError, match="must sample"):
        GRPOConfig(temperature=0)
    plain = CompressedMemoryModel(tiny_model("llama", tokenizer), tokenizer,
                                  memory_config=CONFIG.replace(compression=CompressionConfig("select")),
                                  base_name="tiny", show_progress=False)
    with pytest.raises(ValueError, match="Nothing to train"):
        GRPOTrainer(plain, [EXAMPLE], tmp_path, GRPOConfig(), show_progress=False)
    raw = with_reasoner_adapter(CompressedMemoryModel(tiny_model("llama", tokenizer), tokenizer,
                                                      memory_config=MemoryConfig(chunking=ChunkingConfig(64)),
                                                      base_name="tiny", show_progress=False))
    with pytest.raises(ValueError, match="ReadingConfig\\(mode='compressed'\\)"):
        GRPOTrainer(raw, [EXAMPLE], tmp_path, GRPOConfig(), show_progress=False)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "context": "c"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1 lacks \['answers'\]"):
        examples_from_jsonl(bad)
    for line in ('{"question": "q", "context": "c", "answers": ["a"]}\n{"question": ', '["a list"]'):
        bad.write_text(line)
        with pytest.raises(ValueError, match=r"bad.jsonl:\d is not a JSON object"):
            examples_from_jsonl(bad)


def test_reasoner_adapter_is_on_only_while_the_reasoner_reads(tokenizer):
    policy = _policy(tokenizer)
    untouched = tiny_model("llama", tokenizer)
    ids = torch.randint(0, 1000, (1, 12))
    with torch.no_grad():
        plain = policy.model(ids).logits
        with policy.reasoner.active():
            reading = policy.model(ids).logits
        torch.testing.assert_close(plain, untouched(ids).logits, rtol=0, atol=0)
    assert not torch.allclose(reading, plain, atol=1e-4)


def test_grpo_command_trains_resumes_and_writes_a_checkpoint_that_loads(tokenizer, tmp_path):
    import json

    from compressmem.cli import main

    base = tmp_path / "base"
    tiny_model("llama", tokenizer).save_pretrained(base)
    tokenizer.save_pretrained(base)
    config = tmp_path / "config.json"
    CONFIG.replace(compression=CompressionConfig("none")).save(config)
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"context": EXAMPLE.context, "question": EXAMPLE.question,
                                "answers": list(EXAMPLE.answers)}) + "\n")
    out = tmp_path / "run"
    common = ["train", "grpo", "--model", str(base), "--config", str(config), "--data", str(data), "--out", str(out),
              "--group-size", "2", "--questions-per-step", "1", "--max-new-tokens", "3", "--reasoner-rank", "2",
              "--save-every", "1", "--quiet"]
    assert main([*common, "--steps", "1"]) == 0
    assert main([*common, "--steps", "2"]) == 0  # resumes at step 1
    log = [json.loads(line) for line in (out / "grpo_log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == [1, 2]
    loaded = CompressedMemoryModel.from_pretrained(str(base), checkpoint=out, show_progress=False)
    assert loaded.reasoner_adapter is not None and loaded.reasoner_adapter.lora_config.r == 2
