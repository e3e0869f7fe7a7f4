"""`compressmem compress`: a long text file into a reusable bank, in one process or shared by the processes of
`accelerate launch` (one bank either way)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .options import CommandError, add_model_options, load_model, read_text

if TYPE_CHECKING:
    from accelerate import PartialState

    from ..bank import MemoryBank
    from ..model import CompressedMemoryModel


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("compress", help="compress a long text file into a reusable memory bank")
    parser.add_argument("file", type=Path)
    parser.add_argument(
        "-o",
        "--output",
        required=True,
        type=Path,
        help="a .safetensors file, or a folder: the text is then streamed into a bank on disk "
        "(flat memory, for files of any size)",
    )
    parser.add_argument(
        "--sign-key",
        type=Path,
        help="sign the bank with this key file: an Ed25519 private key (PEM; needs compressmem[signing]) or an "
        "HMAC secret shared by a team; readers check it with ask --trusted-key",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing .safetensors file or bank folder at -o, or write a bank into a folder that "
        "holds other files (refused without it)",
    )
    add_model_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """One process writes a .safetensors file from the text in memory, or streams it into a folder; several
    stream it into the folder together, each compressing its share of the chunks."""
    from ..bank import sign_bank, signing_key
    from ..distributed import process_state

    key = None if args.sign_key is None else signing_key(args.sign_key)  # a key that cannot sign fails first
    state = process_state(cpu=args.device == "cpu")
    to_file = args.output.suffix == ".safetensors"
    text = read_text(args.file, nonempty=True) if to_file and state.num_processes == 1 else None
    if text is None:  # a missing, empty or binary file fails before a model is loaded
        read_text(args.file, limit=1 << 20, nonempty=True)
    _check_output(args.output, to_file, args.overwrite)
    if to_file and not args.output.parent.is_dir():
        raise CommandError(
            f"cannot write {args.output}: the folder {args.output.parent} does not exist; create it first."
        )
    options: dict[str, Any] = {}
    if state.num_processes > 1 and not args.device and state.device.type != "cpu":
        options["device_map"] = str(state.device)  # one accelerator per process
    with state.main_process_first():  # the first load may convert or download the model: once, not racing
        model = load_model(args, **options)
    if text is not None:
        bank = model.compress(text)
        _save(bank, args.output, key)
    elif to_file:
        bank = _shared_to_file(model, args.file, args.output, state, key)
    else:
        bank = _stream(model, args.file, args.output, state)
        if key is not None and state.is_main_process:
            sign_bank(args.output, key)
    if state.is_main_process:
        by = f" (compressed by {state.num_processes} processes)" if state.num_processes > 1 else ""
        signed = "" if key is None else ", signed"
        print(f"{args.output}: {len(bank)} blocks, {bank.num_tokens} tokens, {bank.nbytes / 2**20:.1f} MiB{by}{signed}")
    return 0


def _check_output(output: Path, to_file: bool, overwrite: bool) -> None:
    """Refuse to write over what is at `output` unless `overwrite`: a file, a finished bank folder, or a folder
    of other files (the bank would land among them). An unfinished bank folder is resumed, so it is let through;
    with `overwrite`, a finished bank is removed first."""
    if to_file:
        if output.exists() and not overwrite:
            raise CommandError(f"{output} already exists; pass --overwrite to replace it, or choose another name.")
        return
    if not output.is_dir():
        if output.exists():
            raise CommandError(f"{output} is a file, not a folder; name a folder or a .safetensors file.")
        return
    from ..bank.derived import DERIVED_GLOB
    from ..bank.layout import INDEX, PREFIX_FILE, SHARD_GLOB, SIGNATURE_FILE, STREAM_STATE, TABLE_FILE

    patterns = (INDEX, PREFIX_FILE, TABLE_FILE, SHARD_GLOB, SIGNATURE_FILE, STREAM_STATE, DERIVED_GLOB)
    ours = {path for pattern in patterns for path in output.glob(pattern)}  # a bank folder, finished or not
    others = sorted(path.name for path in output.iterdir() if path not in ours)
    if others and not overwrite:
        raise CommandError(
            f"{output} holds files that are not a memory bank ({', '.join(others[:3])}"
            f"{', ...' if len(others) > 3 else ''}); choose an empty folder, or pass --overwrite to write the bank "
            "among them."
        )
    if (output / INDEX).exists():
        if not overwrite:
            raise CommandError(
                f"{output} already holds a memory bank; pass --overwrite to replace it, or choose an empty folder."
            )
        for path in ours:
            path.unlink()


def _stream(model: CompressedMemoryModel, file: Path, folder: Path | str, state: PartialState) -> MemoryBank:
    """`compress_distributed` of the file's text into `folder`; text found not to be UTF-8 after the part checked
    before the model was loaded is refused naming the file and where (the stream leaves no folder behind)."""
    from ..chunking import text_pieces
    from ..distributed import compress_distributed

    try:
        return compress_distributed(model, text_pieces(file), folder, state=state)
    except UnicodeDecodeError as error:
        raise CommandError(
            f"{file} is not UTF-8 text: {error.reason} at byte {_first_invalid_byte(file)}; convert it to text first."
        ) from None


def _first_invalid_byte(file: Path) -> int:
    """The offset of the first byte of `file` that is not UTF-8, read a MiB at a time."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(file, "rb") as handle:
        while block := handle.read(1 << 20):
            try:
                decoder.decode(block)
            except UnicodeDecodeError as error:
                return offset + error.start - len(decoder.getstate()[0])
            offset += len(block)
    return offset


def _shared_to_file(
    model: CompressedMemoryModel, file: Path, output: Path, state: PartialState, key: Any
) -> MemoryBank:
    """Several processes, one .safetensors file: they fill a temporary bank folder beside it, which the main
    process then writes out as the file and removes."""
    import shutil
    import tempfile

    from accelerate.utils import broadcast_object_list

    folder = [tempfile.mkdtemp(prefix=f"{output.name}.", dir=output.parent) if state.is_main_process else None]
    broadcast_object_list(folder)
    shared = folder[0]
    if shared is None:
        raise RuntimeError("The main process shared no temporary bank folder with this process.")
    bank = _stream(model, file, shared, state)
    if state.is_main_process:
        _save(bank, output, key)
        shutil.rmtree(shared)
    return bank


def _save(bank: MemoryBank, output: Path, key: Any) -> None:
    """`bank.save(output)`, signed with `key` when there is one, or a one-line error when the file cannot be
    written."""
    from safetensors import SafetensorError

    try:
        bank.save(output, sign_key=key)
    except SafetensorError as error:  # safetensors' own I/O errors (a folder missing, no space, not writable)
        raise CommandError(
            f"cannot write {output} ({error}); check the path, its permissions and the free space."
        ) from error
