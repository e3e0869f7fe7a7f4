"""`compressmem ask|compress|eval|train`: answer a question over a long file, compress it into a bank,
run the evaluation suite, or train the gate head."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .config import MemoryConfig
from .embedded import DEFAULT_MODEL

if TYPE_CHECKING:
    from accelerate import PartialState

    from .bank import MemoryBank
    from .model import CompressedMemoryModel


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="compressmem", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    ask = commands.add_parser("ask", help="answer a question over a long text file")
    ask.add_argument("--context", required=True, type=Path,
                     help="UTF-8 text file, a .safetensors bank, or a bank folder written by compress")
    ask.add_argument("--question", required=True)
    _common(ask)
    ask.add_argument("--max-new-tokens", type=int, default=64)
    ask.add_argument("--trace", action="store_true", help="print the blocks read and the working memory")

    compress = commands.add_parser("compress", help="compress a long text file into a reusable memory bank")
    compress.add_argument("file", type=Path)
    compress.add_argument("-o", "--output", required=True, type=Path,
                          help="a .safetensors file, or a folder: the text is then streamed into a bank on disk "
                               "(flat memory, for files of any size)")
    _common(compress)

    evaluate = commands.add_parser("eval", help="seeded long-context tasks, side by side across modes")
    _common(evaluate)
    evaluate.add_argument("--task", default="niah_single", help="comma-separated tasks: " + ",".join(_tasks()))
    evaluate.add_argument("--lengths", default="8k,16k,32k", type=_token_counts, help="e.g. 8k,16k,32k or 1.75m")
    evaluate.add_argument("--n", type=int, default=50, help="cases per task and length")
    evaluate.add_argument("--modes", default="default,memagent,full", help="comma-separated: default, memagent, "
                          "oracle (perfect gate), full (plain generate over the whole context)")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--out", required=True, type=Path, help="folder for cases.jsonl, summary.md and plots")
    evaluate.add_argument("--max-new-tokens", type=int, default=48)
    evaluate.add_argument("--memagent-chunk-size", type=int, default=2048, help="chunk size of the MemAgent mode")
    evaluate.add_argument("--haystack", type=Path, help="haystack for needle and variable tracking tasks "
                          "(RULER's pg_essays.json or a text file); default ../shared/data")
    evaluate.add_argument("--hotpotqa-file", type=Path, help="HotpotQA-layout JSON; default ../shared/data")
    evaluate.add_argument("--no-plots", action="store_true", help="skip the PNG plots (no matplotlib needed)")

    train = commands.add_parser("train", help="train a part of compressmem")
    trainers = train.add_subparsers(dest="trainer", required=True)
    gate = trainers.add_parser("gate", help="train the gate head on evidence labels of the evaluation tasks")
    _common(gate)
    gate.add_argument("--out", required=True, type=Path, help="checkpoint folder to write (examples are cached here)")
    gate.add_argument("--task", default="niah_single,variable_tracking,hotpotqa", help="comma-separated tasks")
    gate.add_argument("--lengths", default="4k,8k,16k", type=_token_counts, help="context lengths of the cases")
    gate.add_argument("--n-train", type=int, default=16, help="training cases per task and length")
    gate.add_argument("--n-test", type=int, default=4, help="held-out cases per task and length")
    gate.add_argument("--seed", type=int, default=0)
    gate.add_argument("--first-case", type=int, default=20,
                      help="number of the first training case: the evaluation's cases 0..first-1 are never trained on")
    gate.add_argument("--no-lexical", action="store_true", help="attention features only, no BM25 feature")
    gate.add_argument("--max-steps", type=int, default=6, help="reads per question in the checkpoint's configuration")
    gate.add_argument("--l2", type=float, default=1e-2, help="L2 penalty on the standardised features' weights")
    gate.add_argument("--haystack", type=Path, help="haystack for the needle and variable tracking tasks")
    gate.add_argument("--hotpotqa-file", type=Path, help="HotpotQA-layout JSON")

    pre = trainers.add_parser("pretrain", help="pre-train the learned compressor: rebuild and continue a chunk "
                              "from its block alone (the base model frozen)")
    _common(pre)
    pre.add_argument("--out", required=True, type=Path, help="checkpoint folder; a run found there is resumed")
    pre.add_argument("--files", nargs="*", type=Path, help="text files to train on (default: the essay haystack in "
                     "../shared/data)")
    pre.add_argument("--steps", type=int, default=200)
    pre.add_argument("--batch-size", type=int, default=4)
    pre.add_argument("--learning-rate", type=float, default=1e-3)
    pre.add_argument("--continuation-tokens", type=int, default=64)
    pre.add_argument("--save-every", type=int, default=50)
    pre.add_argument("--ratio", type=float, help="memory tokens: one per RATIO chunk tokens (default: the config's)")
    pre.add_argument("--rank", type=int, default=8, help="LoRA rank of a new compressor")
    pre.add_argument("--seed", type=int, default=0)

    grpo = trainers.add_parser("grpo", help="train compressor and reasoner end to end with GRPO from a verifiable "
                               "reward (start from a pre-trained compressor with --memory)")
    _common(grpo)
    grpo.add_argument("--out", required=True, type=Path, help="checkpoint folder; a run found there is resumed")
    grpo.add_argument("--task", default="niah_single", help=f"task whose generator makes the questions: {_tasks()}")
    grpo.add_argument("--length", default="1k", type=lambda text: _token_counts(text)[0],
                      help="context length of the training questions")
    grpo.add_argument("--n-train", type=int, default=64, help="training questions (cycled through)")
    grpo.add_argument("--first-case", type=int, default=20,
                      help="number of the first training case: the evaluation's cases 0..first-1 are never trained on")
    grpo.add_argument("--data", type=Path, help="JSONL of {context, question, answers} to train on instead of --task")
    grpo.add_argument("--steps", type=int, default=50)
    grpo.add_argument("--questions-per-step", type=int, default=2)
    grpo.add_argument("--group-size", type=int, default=4, help="rollouts per question")
    grpo.add_argument("--temperature", type=float, default=1.0)
    grpo.add_argument("--top-p", type=float, default=1.0)
    grpo.add_argument("--max-new-tokens", type=int, default=32, help="answer tokens per rollout")
    grpo.add_argument("--learning-rate", type=float, default=1e-4)
    grpo.add_argument("--clip", type=float, default=0.2)
    grpo.add_argument("--kl-coef", type=float, default=0.0, help="KL penalty to the starting policy")
    grpo.add_argument("--iterations", type=int, default=1, help="optimisation passes over each batch of rollouts")
    grpo.add_argument("--micro-batch", type=int, default=8, help="answers per backward pass")
    grpo.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations in backward")
    grpo.add_argument("--reasoner-rank", type=int, default=8, help="LoRA rank of a new reasoner adapter (0: none)")
    grpo.add_argument("--reward", choices=("match", "partial"), default="match", help="match: the evaluation's "
                      "metric; partial: the share of the answer's longest stretch found when it does not match")
    grpo.add_argument("--freeze-compressor", action="store_true", help="train the reasoner adapter only")
    grpo.add_argument("--save-every", type=int, default=10)
    grpo.add_argument("--seed", type=int, default=0)
    grpo.add_argument("--haystack", type=Path, help="haystack for the needle and variable tracking tasks")
    grpo.add_argument("--hotpotqa-file", type=Path, help="HotpotQA-layout JSON")

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    if args.quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    from .bank import BankMismatchError  # heavy imports after argument errors are reported
    from .hub import CheckpointMismatchError

    try:
        return _run(args, _memory_config(args))
    except (CheckpointMismatchError, BankMismatchError, FileNotFoundError) as error:
        raise SystemExit(f"compressmem {args.command}: {error}") from None


def _run(args: argparse.Namespace, config: MemoryConfig | None) -> int:
    from .model import CompressedMemoryModel

    if args.command == "eval":
        return _evaluate(args, config)
    if args.command == "train":
        trainers = {"gate": _train_gate, "pretrain": _pretrain, "grpo": _train_grpo}
        return trainers[args.trainer](args, config)
    if args.command == "compress":
        return _compress(args, config)
    text = None if args.context.suffix == ".safetensors" or args.context.is_dir() else _read_text(args.context)
    model = CompressedMemoryModel.from_pretrained(args.model, memory=args.memory, config=config,
                                                  show_progress=not args.quiet, **_load_options(args))
    return _ask(model, args, text)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"HF id or folder (default {DEFAULT_MODEL})")
    parser.add_argument("--memagent", action="store_true", help="MemAgent baseline: read every raw chunk")
    parser.add_argument("--memory", help="compressmem checkpoint: a folder or a Hub repo id (its configuration and "
                        "trained parts, e.g. a gate head); --config and --chunk-size override its configuration")
    parser.add_argument("--revision", help="the Hub checkpoint's branch, tag or commit (default main)")
    parser.add_argument("--config", type=Path, help="MemoryConfig JSON file")
    parser.add_argument("--chunk-size", type=int, help="tokens per chunk")
    parser.add_argument("--device", help="where the base model runs: cpu, cuda, cuda:1, mps, or auto (spread over "
                        "the devices by accelerate); default cpu")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"),
                        help="weights' dtype (default: float32; auto: the checkpoint's)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or log lines")


def _load_options(args: argparse.Namespace) -> dict:
    """`from_pretrained`'s keywords from --revision (the checkpoint's), --device (`device_map`) and --dtype;
    nothing for an option not given."""
    options = {"revision": args.revision} if args.revision else {}
    if args.device:
        options["device_map"] = args.device
    if args.dtype:
        options["dtype"] = args.dtype
    return options


def _tasks() -> tuple[str, ...]:
    from .eval.tasks import TASKS

    return TASKS


def _token_counts(text: str) -> list[int]:
    """'8k,16k,1.75m' -> [8192, 16384, 1835008]: k and m are binary multiples, as context lengths are."""
    counts = []
    for item in text.split(","):
        item = item.strip().lower()
        scale = {"k": 2**10, "m": 2**20}.get(item[-1:], 1)
        try:
            counts.append(int(float(item[:-1] if scale > 1 else item) * scale))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item!r} is not a token count like 8k, 32768 or 1.75m") from None
    return counts


def _compress(args: argparse.Namespace, config: MemoryConfig | None) -> int:
    """`compress`, in one process or shared by the processes of `accelerate launch` (one bank either way).

    One process writes a .safetensors file from the text in memory, or streams it into a folder;
    several stream it into the folder together, each compressing its share of the chunks.
    """
    from .chunking import text_pieces
    from .distributed import compress_distributed, process_state
    from .model import CompressedMemoryModel

    state = process_state(cpu=args.device == "cpu")
    to_file = args.output.suffix == ".safetensors"
    text = _read_text(args.file) if to_file and state.num_processes == 1 else None
    if text is None:
        _read_text(args.file, limit=1 << 20)  # a missing or binary file fails before a model is loaded
    options = _load_options(args)
    if state.num_processes > 1 and not args.device and state.device.type != "cpu":
        options["device_map"] = str(state.device)  # one accelerator per process
    with state.main_process_first():  # the first load may convert or download the model: once, not racing
        model = CompressedMemoryModel.from_pretrained(args.model, memory=args.memory, config=config,
                                                      show_progress=not args.quiet, **options)
    if text is not None:
        bank = model.compress(text)
        bank.save(args.output)
    elif to_file:
        bank = _compress_shared_to_file(model, args.file, args.output, state)
    else:
        bank = compress_distributed(model, text_pieces(args.file), args.output, state=state)
    if state.is_main_process:
        by = f" (compressed by {state.num_processes} processes)" if state.num_processes > 1 else ""
        print(f"{args.output}: {len(bank)} blocks, {bank.num_tokens} tokens, {bank.nbytes / 2**20:.1f} MiB{by}")
    return 0


def _compress_shared_to_file(model: CompressedMemoryModel, file: Path, output: Path, state: PartialState) -> MemoryBank:
    """Several processes, one .safetensors file: they fill a temporary bank folder beside it, which the main
    process then writes out as the file and removes."""
    import dataclasses
    import shutil
    import tempfile

    from accelerate.utils import broadcast_object_list

    from .chunking import text_pieces
    from .distributed import compress_distributed

    folder = [tempfile.mkdtemp(prefix=f"{output.name}.", dir=output.parent) if state.is_main_process else None]
    broadcast_object_list(folder)
    bank = compress_distributed(model, text_pieces(file), folder[0], state=state)
    if state.is_main_process:
        bank = dataclasses.replace(bank, blocks=list(bank.blocks))
        bank.save(output)
        shutil.rmtree(folder[0])
    return bank


def _evaluate(args: argparse.Namespace, config: MemoryConfig | None) -> int:
    from .eval import markdown, plot, run_eval, summarize
    from .model import CompressedMemoryModel

    tasks = [t.strip() for t in args.task.split(",")]
    unknown = sorted(set(tasks) - set(_tasks()))
    if unknown:
        raise SystemExit(f"Unknown tasks {unknown}; the tasks are {list(_tasks())}.")
    if not args.no_plots:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise SystemExit("Plots need matplotlib: pip install 'compressmem[eval]', or pass --no-plots.") from None
    model = CompressedMemoryModel.from_pretrained(args.model, memory=args.memory, config=config,
                                                  show_progress=not args.quiet, **_load_options(args))
    records = run_eval(model, tasks, args.lengths, args.n, [m.strip() for m in args.modes.split(",")], args.seed,
                       args.out, max_new_tokens=args.max_new_tokens, haystack=args.haystack,
                       hotpotqa_file=args.hotpotqa_file, show_progress=not args.quiet,
                       memagent=MemoryConfig.memagent(chunk_size=args.memagent_chunk_size))
    rows = summarize(records)
    summary = markdown(rows)
    (args.out / "summary.md").write_text(summary, encoding="utf-8")
    if not args.no_plots:
        plot(rows, args.out)
    print(summary)
    return 0


def _train_gate(args: argparse.Namespace, config: MemoryConfig | None) -> int:
    from .eval import make_cases
    from .model import CompressedMemoryModel
    from .training import train_gate

    model = CompressedMemoryModel.from_pretrained(args.model, memory=args.memory, config=config,
                                                  show_progress=not args.quiet, **_load_options(args))
    tasks = [t.strip() for t in args.task.split(",")]
    data = dict(haystack=args.haystack, hotpotqa_file=args.hotpotqa_file)
    train, test = [], []
    for task in tasks:
        for length in args.lengths:
            train += make_cases(task, model.tokenizer, length, args.n_train, args.seed, first=args.first_case, **data)
            test += make_cases(task, model.tokenizer, length, args.n_test, args.seed,
                               first=args.first_case + args.n_train, **data)
    _, report = train_gate(model, train, test, args.out, lexical=not args.no_lexical, max_steps=args.max_steps,
                           l2=args.l2, show_progress=not args.quiet)
    (args.out / "metrics.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    table = report.markdown()
    (args.out / "metrics.md").write_text(table, encoding="utf-8")
    print(table)
    print(f"{args.out}: gate head trained on {report.train_decisions} decisions; load it with "
          f"CompressedMemoryModel.from_pretrained(base, memory={str(args.out)!r}).")
    return 0


def _pretrain(args: argparse.Namespace, config: MemoryConfig | None) -> int:
    import dataclasses

    from .eval import default_data_dir, load_haystack
    from .model import CompressedMemoryModel
    from .training.pretrain import PretrainConfig, pretrain, start_or_resume

    if args.files:
        texts = [_read_text(path) for path in args.files]
    else:
        haystack = default_data_dir() / "pg_essays.json"
        if not haystack.is_file():
            raise SystemExit(f"No --files given and the default essays ({haystack}) are missing; pass --files.")
        texts = [load_haystack(haystack)]
    if config is not None and config.compressor == "learned":
        config = dataclasses.replace(config, compressor="select")  # the base loads training-free; the run adds its own
    base = CompressedMemoryModel.from_pretrained(args.model, config=config, show_progress=not args.quiet,
                                                 **_load_options(args))
    if args.ratio is not None:
        base = base.with_config(dataclasses.replace(base.memory_config, ratio=args.ratio))
    model = start_or_resume(base, args.out, rank=args.rank, seed=args.seed)
    settings = PretrainConfig(steps=args.steps, batch_size=args.batch_size, learning_rate=args.learning_rate,
                              continuation_tokens=args.continuation_tokens, save_every=args.save_every, seed=args.seed)
    log = pretrain(model, texts, args.out, settings, show_progress=not args.quiet)
    print(f"{args.out}: step {log[-1]['step']}, loss {log[0]['loss']:.3f} -> {log[-1]['loss']:.3f}; load it with "
          f"CompressedMemoryModel.from_pretrained(base, memory={str(args.out)!r}).")
    return 0


def _train_grpo(args: argparse.Namespace, config: MemoryConfig | None) -> int:
    from .eval import make_cases
    from .model import CompressedMemoryModel
    from .training.grpo import (
        GRPOConfig,
        examples_from_cases,
        examples_from_jsonl,
        partial_credit_reward,
        train_grpo,
        with_reasoner_adapter,
    )
    from .training.state import TRAINER_STATE

    resuming = (args.out / TRAINER_STATE).is_file()
    model = CompressedMemoryModel.from_pretrained(args.model, memory=args.out if resuming else args.memory,
                                                  config=config, show_progress=not args.quiet, **_load_options(args))
    if args.reasoner_rank and not resuming:
        model = with_reasoner_adapter(model, rank=args.reasoner_rank, seed=args.seed)
    if args.data:
        examples = examples_from_jsonl(args.data)
    else:
        cases = make_cases(args.task, model.tokenizer, args.length, args.n_train, args.seed, haystack=args.haystack,
                           hotpotqa_file=args.hotpotqa_file, first=args.first_case)
        examples = examples_from_cases(cases)
    settings = GRPOConfig(steps=args.steps, questions_per_step=args.questions_per_step, group_size=args.group_size,
                          temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens,
                          learning_rate=args.learning_rate, clip=args.clip, kl_coef=args.kl_coef,
                          iterations=args.iterations, micro_batch=args.micro_batch,
                          gradient_checkpointing=args.gradient_checkpointing,
                          train_compressor=not args.freeze_compressor, save_every=args.save_every, seed=args.seed)
    task = examples[0].task
    reward = partial_credit_reward(task) if args.reward == "partial" else None
    log = train_grpo(model, examples, args.out, settings, reward, show_progress=not args.quiet)
    first, last = log[0], log[-1]
    print(f"{args.out}: step {last['step']}, mean reward {first['reward']:.3f} (step {first['step']}) -> "
          f"{last['reward']:.3f}; load it with CompressedMemoryModel.from_pretrained(base, memory={str(args.out)!r}).")
    return 0


def _memory_config(args: argparse.Namespace) -> MemoryConfig | None:
    if not (args.config or args.chunk_size or args.memagent):
        return None  # the checkpoint's (or the default) configuration
    settings = MemoryConfig.load(args.config).to_dict() if args.config else {}
    if args.chunk_size:
        settings["chunk_size"] = args.chunk_size
    return MemoryConfig.memagent(**settings) if args.memagent else MemoryConfig.from_dict(settings)


def _ask(model, args: argparse.Namespace, text: str | None) -> int:
    from .bank import MemoryBank

    source = {"memory": MemoryBank.load(args.context)} if text is None else {"context": text}
    inputs = model.tokenizer.apply_chat_template([{"role": "user", "content": args.question}],
                                                 add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**inputs, **source, max_new_tokens=args.max_new_tokens, do_sample=False,
                         return_dict_in_generate=True)
    answer = model.tokenizer.decode(out.sequences[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    print(answer.strip())
    if args.trace:
        trace = out.trace[0]
        steps = [{"block": s.block, "recall": s.recall, "memory": s.memory} for s in trace.steps]
        print(json.dumps({"blocks": trace.num_blocks, "read": trace.blocks_read, "steps": steps}, indent=2),
              file=sys.stderr)
    return 0


def _read_text(path: Path, limit: int = -1) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read(limit)
    except UnicodeDecodeError as error:
        raise SystemExit(f"{path} is not UTF-8 text ({error}); convert it to text first.") from None
    except OSError as error:
        raise SystemExit(f"cannot read {path}: {error.strerror}") from None


if __name__ == "__main__":
    sys.exit(main())
