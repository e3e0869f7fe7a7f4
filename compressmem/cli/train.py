"""`compressmem train gate|pretrain|grpo`: train the gate head, pre-train the learned compressor, or train
compressor and reasoner end to end with GRPO. Each trainer writes a loadable checkpoint and resumes a run."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .options import (
    CommandError,
    add_model_options,
    load_model,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    probability,
    read_text,
    task_name,
    task_names,
    token_counts,
)

if TYPE_CHECKING:
    from ..training.grpo import GRPOExample


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("train", help="train a part of compressmem")
    trainers = parser.add_subparsers(dest="trainer", required=True)
    _gate_parser(trainers)
    _pretrain_parser(trainers)
    _grpo_parser(trainers)


def _cases_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--first-case",
        type=non_negative_int,
        default=20,
        help="number of the first training case: the evaluation's cases 0..first-1 are never trained on",
    )
    parser.add_argument("--haystack", type=Path, help="haystack for the needle and variable tracking tasks")
    parser.add_argument("--hotpotqa-file", type=Path, help="HotpotQA-layout JSON")


def _gate_parser(trainers: argparse._SubParsersAction) -> None:
    gate = trainers.add_parser("gate", help="train the gate head on evidence labels of the evaluation tasks")
    add_model_options(gate)
    gate.add_argument("--out", required=True, type=Path, help="checkpoint folder to write (examples are cached here)")
    gate.add_argument(
        "--task", default="niah_single,variable_tracking,hotpotqa", type=task_names, help="comma-separated tasks"
    )
    gate.add_argument("--lengths", default="4k,8k,16k", type=token_counts, help="context lengths of the cases")
    gate.add_argument("--n-train", type=positive_int, default=16, help="training cases per task and length")
    gate.add_argument("--n-test", type=non_negative_int, default=4, help="held-out cases per task and length")
    gate.add_argument("--no-lexical", action="store_true", help="attention features only, no BM25 feature")
    gate.add_argument(
        "--max-steps", type=positive_int, default=6, help="reads per question in the checkpoint's configuration"
    )
    gate.add_argument(
        "--l2", type=non_negative_float, default=1e-2, help="L2 penalty on the standardised features' weights"
    )
    _cases_options(gate)
    gate.set_defaults(run=train_gate)


def _pretrain_parser(trainers: argparse._SubParsersAction) -> None:
    pre = trainers.add_parser(
        "pretrain",
        help="pre-train the learned compressor: rebuild and continue a chunk "
        "from its block alone (the base model frozen); --design lychee: a compressor of LycheeMemory's design, "
        "trained on the continuation after its block",
    )
    add_model_options(pre)
    pre.add_argument("--out", required=True, type=Path, help="checkpoint folder; a run found there is resumed")
    pre.add_argument(
        "--files", nargs="*", type=Path, help="text files to train on (default: the essay haystack in ../shared/data)"
    )
    pre.add_argument("--steps", type=positive_int, default=200)
    pre.add_argument("--batch-size", type=positive_int, default=4)
    pre.add_argument("--learning-rate", type=positive_float, default=1e-3)
    pre.add_argument("--continuation-tokens", type=positive_int, default=64)
    pre.add_argument("--save-every", type=positive_int, default=50)
    pre.add_argument(
        "--ratio",
        type=positive_float,
        help="memory tokens: one per RATIO chunk tokens (default: the configuration's, else 4)",
    )
    pre.add_argument("--rank", type=positive_int, default=8, help="LoRA rank of a new compressor")
    pre.add_argument(
        "--design",
        choices=("learned", "lychee"),
        default="learned",
        help="learned: compressmem's LoRA compressor; lychee: LycheeMemory's design (extra projections copied "
        "from the base's, interleaved memory tokens; its window is --chunk-size)",
    )
    pre.add_argument(
        "--ratios",
        type=ratio_list,
        default=(2, 4, 8),
        help="--design lychee: the ratio mix, one drawn per step (default 2,4,8); --ratio is the one it reads at",
    )
    pre.add_argument("--seed", type=int, default=0)
    pre.set_defaults(run=pretrain)


def ratio_list(text: str) -> tuple[int, ...]:
    """A comma-separated list of positive whole ratios ("2,4,8")."""
    try:
        ratios = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected whole numbers separated by commas, e.g. 2,4,8; got {text!r}"
        ) from None
    if not ratios or any(r < 1 for r in ratios):
        raise argparse.ArgumentTypeError(f"ratios must be positive, got {text!r}")
    return ratios


def _grpo_parser(trainers: argparse._SubParsersAction) -> None:
    from ..eval.tasks import TASKS

    grpo = trainers.add_parser(
        "grpo",
        help="train compressor and reasoner end to end with GRPO from a verifiable "
        "reward (start from a pre-trained compressor with --checkpoint)",
    )
    add_model_options(grpo)
    grpo.add_argument("--out", required=True, type=Path, help="checkpoint folder; a run found there is resumed")
    grpo.add_argument(
        "--task", default="niah_single", type=task_name, help=f"task whose generator makes the questions: {TASKS}"
    )
    grpo.add_argument(
        "--length",
        default="1k",
        type=lambda text: token_counts(text)[0],
        help="context length of the training questions",
    )
    grpo.add_argument("--n-train", type=positive_int, default=64, help="training questions (cycled through)")
    grpo.add_argument("--data", type=Path, help="JSONL of {context, question, answers} to train on instead of --task")
    grpo.add_argument("--steps", type=positive_int, default=50)
    grpo.add_argument("--questions-per-step", type=positive_int, default=2)
    grpo.add_argument("--group-size", type=positive_int, default=4, help="rollouts per question")
    grpo.add_argument("--temperature", type=positive_float, default=1.0)
    grpo.add_argument("--top-p", type=probability, default=1.0)
    grpo.add_argument("--max-new-tokens", type=positive_int, default=32, help="answer tokens per rollout")
    grpo.add_argument("--learning-rate", type=positive_float, default=1e-4)
    grpo.add_argument("--clip", type=positive_float, default=0.2)
    grpo.add_argument("--kl-coef", type=non_negative_float, default=0.0, help="KL penalty to the starting policy")
    grpo.add_argument(
        "--iterations", type=positive_int, default=1, help="optimisation passes over each batch of rollouts"
    )
    grpo.add_argument("--micro-batch", type=positive_int, default=8, help="answers per backward pass")
    grpo.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations in backward")
    grpo.add_argument(
        "--reasoner-rank", type=non_negative_int, default=8, help="LoRA rank of a new reasoner adapter (0: none)"
    )
    grpo.add_argument(
        "--reward",
        choices=("match", "partial"),
        default="match",
        help="match: the evaluation's "
        "metric; partial: the share of the answer's longest stretch found when it does not match",
    )
    grpo.add_argument("--freeze-compressor", action="store_true", help="train the reasoner adapter only")
    grpo.add_argument("--save-every", type=positive_int, default=10)
    _cases_options(grpo)
    grpo.set_defaults(run=train_grpo)


def train_gate(args: argparse.Namespace) -> int:
    from ..eval import make_cases
    from ..training import train_gate as fit

    model = load_model(args)
    data = {"haystack": args.haystack, "hotpotqa_file": args.hotpotqa_file}
    train, test = [], []
    for task in args.task:
        for length in args.lengths:
            train += make_cases(task, model.tokenizer, length, args.n_train, args.seed, first=args.first_case, **data)
            test += make_cases(
                task, model.tokenizer, length, args.n_test, args.seed, first=args.first_case + args.n_train, **data
            )
    _, report = fit(
        model,
        train,
        test,
        args.out,
        lexical=not args.no_lexical,
        max_steps=args.max_steps,
        l2=args.l2,
        show_progress=not args.quiet,
    )
    (args.out / "metrics.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    table = report.markdown()
    (args.out / "metrics.md").write_text(table, encoding="utf-8")
    print(table)
    print(
        f"{args.out}: gate head trained on {report.train_decisions} decisions; load it with "
        f"CompressedMemoryModel.from_pretrained(base, checkpoint={str(args.out)!r})."
    )
    return 0


def pretrain(args: argparse.Namespace) -> int:
    from ..config import MemoryConfig
    from ..eval import default_data_dir, load_haystack
    from ..training.pretrain import PretrainConfig, start_or_resume
    from ..training.pretrain import pretrain as run_pretraining
    from .options import memory_config

    if args.files:
        texts = [read_text(path, nonempty=True) for path in args.files]
    else:
        folder = default_data_dir()
        haystack = None if folder is None else folder / "pg_essays.json"
        if haystack is None or not haystack.is_file():
            raise CommandError(
                "no --files given and the default essays (../shared/data/pg_essays.json) are missing; pass --files."
            )
        texts = [load_haystack(haystack)]
    base = load_model(args, MemoryConfig(), checkpoint=None)  # the run brings its own learned compressor
    try:
        model = start_or_resume(
            base,
            args.out,
            rank=args.rank,
            seed=args.seed,
            ratio=args.ratio,
            config=memory_config(args),
            design=args.design,
            ratios=args.ratios,
        )
    except ValueError as error:  # ConfigError is one
        raise CommandError(str(error)) from None
    settings = PretrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        continuation_tokens=args.continuation_tokens,
        save_every=args.save_every,
        seed=args.seed,
    )
    log = run_pretraining(model, texts, args.out, settings, show_progress=not args.quiet)
    print(
        f"{args.out}: step {log[-1]['step']}, loss {log[0]['loss']:.3f} -> {log[-1]['loss']:.3f}; load it with "
        f"CompressedMemoryModel.from_pretrained(base, checkpoint={str(args.out)!r})."
    )
    return 0


def train_grpo(args: argparse.Namespace) -> int:
    from ..eval import make_cases
    from ..training.grpo import (
        GRPOConfig,
        examples_from_cases,
        examples_from_jsonl,
        partial_credit_reward,
        with_reasoner_adapter,
    )
    from ..training.grpo import train_grpo as run_grpo
    from ..training.state import TRAINER_STATE
    from .options import checkpoint_of

    resuming = (args.out / TRAINER_STATE).is_file()
    model = load_model(args, checkpoint=args.out if resuming else checkpoint_of(args))
    if args.reasoner_rank and not resuming:
        model = with_reasoner_adapter(model, rank=args.reasoner_rank, seed=args.seed)
    if args.data:
        examples = _examples(args.data, examples_from_jsonl)
    else:
        cases = make_cases(
            args.task,
            model.tokenizer,
            args.length,
            args.n_train,
            args.seed,
            haystack=args.haystack,
            hotpotqa_file=args.hotpotqa_file,
            first=args.first_case,
        )
        examples = examples_from_cases(cases)
    settings = GRPOConfig(
        steps=args.steps,
        questions_per_step=args.questions_per_step,
        group_size=args.group_size,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        learning_rate=args.learning_rate,
        clip=args.clip,
        kl_coef=args.kl_coef,
        iterations=args.iterations,
        micro_batch=args.micro_batch,
        gradient_checkpointing=args.gradient_checkpointing,
        train_compressor=not args.freeze_compressor,
        save_every=args.save_every,
        seed=args.seed,
    )
    reward = partial_credit_reward(examples[0].task) if args.reward == "partial" else None
    log = run_grpo(model, examples, args.out, settings, reward, show_progress=not args.quiet)
    first, last = log[0], log[-1]
    print(
        f"{args.out}: step {last['step']}, mean reward {first['reward']:.3f} (step {first['step']}) -> "
        f"{last['reward']:.3f}; load it with CompressedMemoryModel.from_pretrained(base, checkpoint="
        f"{str(args.out)!r})."
    )
    return 0


def _examples(path: Path, read: Callable[[Path], list[GRPOExample]]) -> list[GRPOExample]:
    """--data's examples (the reader names the file and any line that is not an example), or a one-line error for a
    file that is not text."""
    try:
        return read(path)
    except UnicodeDecodeError as error:
        raise CommandError(f"--data {path} is not UTF-8 text ({error.reason}); give a JSONL file.") from None
