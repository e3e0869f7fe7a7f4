"""End-to-end GRPO (the paper's training stage): compressor and reasoner learn from a verifiable reward.

For each question a group of rollouts runs the whole loop (compress, gate, sampled memory updates,
sampled answer); each rollout's reward is scored against the gold answers, normalised within its
group, and given to every token it generated, in every update and in the answer (MemAgent's
multi-conversation RL). The loss recomputes each block read with gradients, so the policy gradient
reaches the learned compressor through the reasoner's attention over the block, as well as the
reasoner's own LoRA adapter. The gate is not trained here (`compressmem train gate` does that).

Memory stays bounded: the conversations that read one block form one micro-batch (the block is
recomputed once for them), answers go in micro-batches of `micro_batch`, and each micro-batch's
backward pass runs before the next (gradient accumulation over the whole step). Activation
checkpointing cuts a micro-batch's own footprint to about one layer's activations. `accelerate`
places the model and averages gradients across processes, so the same code runs on one CPU, one
GPU, or several (`accelerate launch`).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..bank import MemoryBank
from ..compressors import LearnedCompressor
from ..eval.cases import EvalCase
from ..eval.scoring import score_answer
from ..hf.adapters import ReasonerAdapter, keep_quantized_differentiable
from ..hf.checkpointing import activation_checkpointing
from ..hf.tokens import decode_text
from ..model import CompressedMemoryModel, sample_training_rollouts
from ..reader import StepInput, cut_at_eos, pad_token_id, step_input, step_logprobs
from .grpo_loss import clipped_policy_loss, group_advantages
from .state import peak_memory_mib, read_log, resume_trainer_state, save_trainer_state, write_log

LOG_FILE = "grpo_log.jsonl"

RewardFunction = Callable[[str, Sequence[str]], float]
"""`reward(prediction, gold_answers) -> float`: how good one rollout's final answer is."""


@dataclass(frozen=True)
class GRPOExample:
    """One training question: its long context and the answers that earn a reward."""

    question: str
    context: str
    answers: tuple[str, ...]
    task: str = "custom"


def examples_from_jsonl(path: str | Path) -> list[GRPOExample]:
    """Examples from a JSONL file whose lines hold `context`, `question` and `answers` (a list or a string)."""
    examples = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number} is not a JSON object ({error.msg}); each line is one example.") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{number} is not a JSON object; each line is one example.")
        missing = {"context", "question", "answers"} - set(record)
        if missing:
            raise ValueError(f"{path}:{number} lacks {sorted(missing)}; each line needs context, question, answers.")
        answers = record["answers"]
        answers = (answers,) if isinstance(answers, str) else tuple(answers)
        if not answers or not all(isinstance(a, str) and a for a in answers):
            raise ValueError(f"{path}:{number}: answers must be a non-empty string or list of non-empty strings.")
        examples.append(GRPOExample(record["question"], record["context"], answers, record.get("task", "custom")))
    if not examples:
        raise ValueError(f"{path} holds no examples.")
    return examples


def examples_from_cases(cases: Iterable[EvalCase]) -> list[GRPOExample]:
    """Examples from the evaluation generators' `EvalCase`s (see `compressmem.eval.make_cases`)."""
    return [GRPOExample(case.question, case.context, tuple(case.answers), case.task) for case in cases]


def default_reward(task: str) -> RewardFunction:
    """The evaluation's own metric for `task`: substring match (all answers, for variable tracking)."""
    return lambda prediction, answers: score_answer(task, prediction, answers)["substring"]


def partial_credit_reward(task: str) -> RewardFunction:
    """`default_reward`, or, when it gives nothing, the longest stretch of a gold answer that the
    prediction contains, as a share of that answer (so a group of near misses still has a best one)."""
    exact = default_reward(task)

    def reward(prediction: str, answers: Sequence[str]) -> float:
        full = exact(prediction, answers)
        return full if full > 0 else max(_longest_common_run(prediction.lower(), a.lower()) / len(a) for a in answers)

    return reward


def _longest_common_run(text: str, answer: str) -> int:
    best = 0
    for start in range(len(answer)):
        for end in range(len(answer), start + best, -1):
            if answer[start:end] in text:
                best = end - start
                break
    return best


@dataclass
class GRPOConfig:
    """Settings of `train_grpo`.

    `iterations` is the number of optimisation passes over one batch of rollouts (GRPO's mu): with
    1 the importance ratio is 1 and clipping never bites; above 1 the first pass's log-probabilities
    are the old policy's. `kl_coef` penalises drift from the policy the run started from.
    """

    steps: int = 50
    questions_per_step: int = 2
    group_size: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 32
    learning_rate: float = 1e-4
    clip: float = 0.2
    kl_coef: float = 0.0
    iterations: int = 1
    micro_batch: int = 8
    max_grad_norm: float = 1.0
    gradient_checkpointing: bool = False
    train_compressor: bool = True
    save_every: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        if self.group_size < 2:
            raise ValueError(f"group_size must be at least 2 (advantages compare rollouts), got {self.group_size}.")
        for name in ("steps", "questions_per_step", "max_new_tokens", "iterations", "micro_batch", "save_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if not self.temperature > 0 or not 0 < self.top_p <= 1:
            raise ValueError("temperature must be > 0 and top_p in (0, 1]: rollouts must sample.")


@dataclass
class Conversation:
    """One text a rollout generated: a read of `block` of `bank` or, without a block, the answer; with the
    exact prompt the model read, the tokens it sampled and their log-probabilities when sampled."""

    rollout: int
    prompt_ids: torch.Tensor
    output_ids: torch.Tensor
    bank: MemoryBank | None = None
    block: int | None = None
    sampled_logprobs: torch.Tensor | None = None


@dataclass
class RolloutGroup:
    """The group of rollouts of one question: final answers, rewards, and every conversation."""

    example: GRPOExample
    predictions: list[str]
    rewards: torch.Tensor
    conversations: list[Conversation] = field(default_factory=list)


def sample_group(
    model: CompressedMemoryModel, example: GRPOExample, config: GRPOConfig, reward: RewardFunction
) -> RolloutGroup:
    """Run `group_size` sampled rollouts of the whole loop for one question (no gradients); every
    conversation keeps the inputs the traces recorded, so the loss scores exactly what was sampled."""
    size = config.group_size
    bank = model.compress(example.context, show_progress=False)
    prompt = model.prompt_ids(example.question)
    question = model.prompts.find_question(prompt[0])
    sampling = {"do_sample": True, "temperature": config.temperature, "top_p": config.top_p}
    out = sample_training_rollouts(
        model,
        prompt.expand(size, -1).to(model.model.device),
        [question] * size,
        [bank] * size,
        dict(max_new_tokens=config.max_new_tokens, return_dict_in_generate=True, output_logits=True, **sampling),
        notes_kwargs=sampling,
    )
    eos = model.model.generation_config.eos_token_id or model.tokenizer.eos_token_id
    generated = out.sequences[:, prompt.shape[1] :].cpu()
    answers = [cut_at_eos(row, eos) for row in generated]
    if out.logits is None or out.trace is None:
        raise RuntimeError("The rollouts came back without their logits or traces, which GRPO scores.")
    answer_logprobs = torch.stack(out.logits, dim=1).float().cpu().log_softmax(-1)
    answer_logprobs = answer_logprobs.gather(-1, generated.unsqueeze(-1)).squeeze(-1)
    predictions = [decode_text(model.tokenizer, ids, skip_special_tokens=True).strip() for ids in answers]
    rewards = torch.tensor([float(reward(p, example.answers)) for p in predictions])
    conversations = []
    for rollout, (trace, answer) in enumerate(zip(out.trace, answers)):
        for step in trace.steps:
            conversations.append(
                Conversation(
                    rollout,
                    torch.tensor(step.prompt_ids),
                    torch.tensor(step.output_ids),
                    bank,
                    step.block,
                    torch.tensor(step.output_logprobs),
                )
            )
        conversations.append(
            Conversation(
                rollout,
                torch.tensor(trace.answer_prompt_ids),
                answer,
                sampled_logprobs=answer_logprobs[rollout, : answer.numel()],
            )
        )
    return RolloutGroup(example, predictions, rewards, conversations)


def conversation_logprobs(
    model: CompressedMemoryModel, conversations: list[Conversation], recompute_block: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities `[rows, tokens]` of each conversation's generated tokens under the current policy,
    and the mask of real tokens; all conversations must read the same block (or all be answers).

    Each read is fed through the reader's own `step_input` and `step_logprobs`, as it was when sampled.
    The block is recomputed by the learned compressor with gradients when `recompute_block`, else read
    from the bank as it was made.
    """
    first = conversations[0]
    if first.block is None:
        inputs = [StepInput(None, None, c.prompt_ids, 0) for c in conversations]
    else:
        bank, block = first.bank, first.block
        if bank is None:
            raise ValueError(f"Rollout {first.rollout}'s read of block {block} names no bank to read it from.")
        made = model.builder.forward(bank.token_ids(block)[None]) if recompute_block else None
        device, dtype = model.model.device, model.model.dtype
        inputs = [
            step_input(bank, block, c.prompt_ids, "compressed", made, device=device, dtype=dtype) for c in conversations
        ]
    with model.reasoner.active():
        return step_logprobs(model.model, inputs, [c.output_ids for c in conversations], pad_token_id(model.tokenizer))


def micro_batches(conversations: list[Conversation], size: int) -> list[list[Conversation]]:
    """The conversations that read one block (any number: the block is computed once for them), then
    the answers in groups of `size`."""
    by_block: dict[tuple[int, int], list[Conversation]] = defaultdict(list)
    answers = []
    for conversation in conversations:
        if conversation.block is None:
            answers.append(conversation)
        else:
            by_block[(id(conversation.bank), conversation.block)].append(conversation)
    return [*by_block.values(), *(answers[i : i + size] for i in range(0, len(answers), size))]


class GRPOTrainer:
    """Trains `model`'s learned compressor and reasoner adapter with GRPO on `examples`.

    Like TRL's `GRPOTrainer`, it takes the policy, a dataset and a reward function; `train()` writes
    a compressmem checkpoint, `trainer_state.safetensors` and `grpo_log.jsonl` (plus its curve) to
    `out`, and resumes a run it finds there.
    """

    def __init__(
        self,
        model: CompressedMemoryModel,
        examples: Sequence[GRPOExample],
        out: str | Path,
        config: GRPOConfig | None = None,
        reward: RewardFunction | None = None,
        show_progress: bool = True,
    ) -> None:
        from accelerate import Accelerator

        if not examples:
            raise ValueError("GRPO needs at least one example.")
        if model.memory_config.reading.mode != "compressed":
            raise ValueError(
                "GRPO trains the reasoner reading compressed blocks; use a configuration with "
                "ReadingConfig(mode='compressed')."
            )
        self.config = config or GRPOConfig()
        self.accelerator = Accelerator()
        self.model = model.with_config(model.memory_config, show_progress=False)
        self.examples = list(examples)
        self.out = Path(out)
        self.reward = reward
        self.show_progress = show_progress
        compressor = self.model.compressor
        self.learned_compressor = (
            compressor if self.config.train_compressor and isinstance(compressor, LearnedCompressor) else None
        )
        self.learns_compressor = self.learned_compressor is not None
        self.weights = self._trainable_weights()
        self.initial = [weight.detach().clone() for weight in self.weights] if self.config.kl_coef else None
        self.optimizer = torch.optim.AdamW(self.weights, lr=self.config.learning_rate)

    def _trainable_weights(self) -> list[torch.nn.Parameter]:
        """The reasoner adapter's weights, and the compressor's when it learns."""
        if self.model.reasoner_adapter is None and not self.learns_compressor:
            raise ValueError(
                "Nothing to train: the model has no reasoner adapter and no learned compressor; "
                "add one with `with_reasoner_adapter()` or use compression method 'learned'."
            )
        weights = []
        if self.learned_compressor is not None:
            weights += self.learned_compressor.weights(self.model.model)
        if self.model.reasoner_adapter is not None:
            weights += self.model.reasoner_adapter.weights(self.model.model)
        return weights

    @contextlib.contextmanager
    def _training(self) -> Iterator[None]:
        """The user's model set up for training (on the accelerator's device, the base frozen and, when it is
        4-bit, kept differentiable: `keep_quantized_differentiable`; only the trained weights learn), and put
        back as it was afterwards: device, which weights learn, train or eval mode."""
        base = self.model.model
        device = base.device
        learning = {name: weight.requires_grad for name, weight in base.named_parameters()}
        embeddings = self.learned_compressor.memory_embeddings if self.learned_compressor is not None else None
        embeddings_learning = embeddings is not None and embeddings.requires_grad
        was_training = base.training
        if device != self.accelerator.device:
            base.to(self.accelerator.device)
        if embeddings is not None:
            embeddings.data = embeddings.data.to(base.device)
        keep_quantized_differentiable(base)
        for weight in base.parameters():
            weight.requires_grad_(False)
        for weight in self.weights:
            weight.requires_grad_(True)
        try:
            yield
        finally:
            for name, weight in base.named_parameters():
                weight.requires_grad_(learning.get(name, False))
            if embeddings is not None:
                embeddings.requires_grad_(embeddings_learning)
            base.train(was_training)
            if base.device != device:
                # transformers wraps PreTrainedModel.to with functools.wraps, which typeshed types as an unbound call
                base.to(device)  # type: ignore[arg-type]
                if embeddings is not None:
                    embeddings.data = embeddings.data.to(device)

    def train(self) -> list[dict]:
        """Run to `config.steps` optimisation steps; returns the log (one entry a step)."""
        config = self.config
        self.out.mkdir(parents=True, exist_ok=True)
        step = resume_trainer_state(self.optimizer, self.out)
        log = read_log(self.out / LOG_FILE, step)
        bar = tqdm(
            total=config.steps,
            initial=step,
            desc="GRPO",
            unit="step",
            disable=not self.show_progress or not self.accelerator.is_main_process,
        )
        with bar, self._training():
            while step < config.steps:
                entry = self.step(step)
                step += 1
                log.append(entry)
                bar.update(1)
                bar.set_postfix(reward=f"{entry['reward']:.2f}")
                if step % config.save_every == 0 or step == config.steps:
                    self._save(step, log)
        return log

    def step(self, step: int) -> dict:
        """One optimisation step: sample this process's share of the questions, then learn from the rollouts."""
        config = self.config
        started = time.perf_counter()
        torch.manual_seed(config.seed * 1_000_003 + step * 101 + self.accelerator.process_index)
        chosen = self._questions(step)
        self.model.model.eval()
        groups = [
            sample_group(self.model, example, config, self.reward or default_reward(example.task)) for example in chosen
        ]
        sampled = time.perf_counter()
        loss = self._learn(groups)
        rewards = self.accelerator.gather(torch.stack([g.rewards for g in groups]).to(self.accelerator.device))
        return {
            "step": step + 1,
            "reward": rewards.float().mean().item(),
            "reward_std": rewards.float().std().item(),
            "loss": loss,
            "rollout_seconds": sampled - started,
            "learn_seconds": time.perf_counter() - sampled,
            "seconds": time.perf_counter() - started,
            "generated_tokens": sum(c.output_ids.numel() for g in groups for c in g.conversations),
            "conversations": sum(len(g.conversations) for g in groups),
            "peak_memory_mib": peak_memory_mib(),
            "sample": {"answers": list(groups[0].example.answers), "prediction": groups[0].predictions[0]},
        }

    def _questions(self, step: int) -> list[GRPOExample]:
        """This process's questions of step `step`: the step's global batch, cycling through the examples."""
        total = self.config.questions_per_step * self.accelerator.num_processes
        start = step * total + self.accelerator.process_index * self.config.questions_per_step
        return [self.examples[(start + i) % len(self.examples)] for i in range(self.config.questions_per_step)]

    def _learn(self, groups: list[RolloutGroup]) -> float:
        """Accumulate the clipped policy gradient over every micro-batch, `iterations` times, stepping after each."""
        config = self.config
        advantages = group_advantages(torch.stack([g.rewards for g in groups]))
        conversations = [c for g in groups for c in g.conversations]
        gains = {id(c): advantages[i, c.rollout].item() for i, g in enumerate(groups) for c in g.conversations}
        if not config.kl_coef:  # a rollout with zero advantage teaches nothing: skip its forward passes
            conversations = [c for c in conversations if gains[id(c)] != 0.0]
        total_tokens = sum(c.output_ids.numel() for c in conversations)
        batches = micro_batches(conversations, config.micro_batch)
        old: dict[int, torch.Tensor] = {}
        reference = self._reference_logprobs(batches) if config.kl_coef else {}
        loss_sum = 0.0
        with activation_checkpointing(self.model.model, config.gradient_checkpointing):
            for _ in range(config.iterations):
                self.optimizer.zero_grad()
                for batch in batches:
                    logprobs, mask = conversation_logprobs(self.model, batch, self.learns_compressor)
                    key = id(batch[0])
                    old.setdefault(key, logprobs.detach())
                    gain = torch.tensor([gains[id(c)] for c in batch], device=logprobs.device)
                    loss = clipped_policy_loss(
                        logprobs, old[key], gain, mask, config.clip, config.kl_coef, reference.get(key)
                    )
                    share = mask.sum().item() / total_tokens
                    (loss * share).backward()
                    loss_sum += loss.item() * share
                self._reduce_gradients()
                torch.nn.utils.clip_grad_norm_(self.weights, config.max_grad_norm)
                self.optimizer.step()
        return loss_sum / config.iterations

    def _reference_logprobs(self, batches: list[list[Conversation]]) -> dict[int, torch.Tensor]:
        """Each micro-batch's log-probabilities under the starting policy (for the KL penalty)."""
        reference = {}
        if self.initial is None:
            raise RuntimeError("The KL penalty's reference needs the starting weights, kept only when kl_coef > 0.")
        with torch.no_grad(), _weights_swapped(self.weights, self.initial):
            for batch in batches:
                reference[id(batch[0])] = conversation_logprobs(self.model, batch, self.learns_compressor)[0]
        return reference

    def _reduce_gradients(self) -> None:
        if self.accelerator.num_processes == 1:
            return
        for weight in self.weights:
            if weight.grad is None:
                weight.grad = torch.zeros_like(weight)
            weight.grad = self.accelerator.reduce(weight.grad, reduction="mean")

    def _save(self, step: int, log: list[dict]) -> None:
        self.accelerator.wait_for_everyone()
        if not self.accelerator.is_main_process:
            return
        self.model.save_pretrained(self.out)
        save_trainer_state(self.optimizer, step, self.out, asdict(self.config))
        write_log(log, self.out / LOG_FILE, "reward", "mean reward of the step's rollouts")


@contextlib.contextmanager
def _weights_swapped(weights: list[torch.nn.Parameter], replacements: list[torch.Tensor]) -> Iterator[None]:
    """The body runs with `replacements` in place of the weights' values, which are restored after."""
    saved = [weight.detach().clone() for weight in weights]
    with torch.no_grad():
        for weight, value in zip(weights, replacements):
            weight.copy_(value)
    try:
        yield
    finally:
        with torch.no_grad():
            for weight, value in zip(weights, saved):
                weight.copy_(value)


def with_reasoner_adapter(model: CompressedMemoryModel, rank: int = 8, seed: int = 0) -> CompressedMemoryModel:
    """`model` with a fresh reasoner LoRA adapter of rank `rank` (the model's own, if it has one already)."""
    if model.reasoner_adapter is not None:
        return model
    adapter = ReasonerAdapter.initialise(model.model, rank, seed)
    return type(model)(
        model.model,
        model.tokenizer,
        memory_config=model.memory_config,
        base_name=model.base_name,
        show_progress=model.show_progress,
        gate_head=model.gate_head,
        compressor=model.compressor if isinstance(model.compressor, LearnedCompressor) else None,
        reasoner_adapter=adapter,
    )


def train_grpo(
    model: CompressedMemoryModel,
    examples: Sequence[GRPOExample],
    out: str | Path,
    config: GRPOConfig | None = None,
    reward: RewardFunction | None = None,
    show_progress: bool = True,
) -> list[dict]:
    """Train with GRPO (see `GRPOTrainer`); a run already in `out` is resumed (load `model` from that
    checkpoint first, so its weights are the run's). Returns the log."""
    return GRPOTrainer(model, examples, out, config, reward, show_progress).train()
