import subprocess
import sys

from compressmem import MemoryConfig, NotesConfig

from .conftest import tiny_model


def test_compress_then_ask_from_the_command_line(tokenizer, essay_text, tmp_path):
    base = tmp_path / "base"
    tiny_model("llama", tokenizer).save_pretrained(base)
    tokenizer.save_pretrained(base)
    document = tmp_path / "doc.txt"
    document.write_text(essay_text[:3000], encoding="utf-8")
    bank = tmp_path / "doc.safetensors"
    common = ["--model", str(base), "--chunk-size", "128", "--quiet"]
    done = subprocess.run([sys.executable, "-m", "compressmem.cli", "compress", str(document), "-o", str(bank), *common],
                          capture_output=True, text=True, check=True)
    assert bank.exists() and "blocks" in done.stdout
    folder = tmp_path / "streamed"
    subprocess.run([sys.executable, "-m", "compressmem.cli", "compress", str(document), "-o", str(folder), *common],
                   capture_output=True, text=True, check=True)
    assert (folder / "bank.json").exists()
    for source in (document, bank, folder):
        asked = subprocess.run([sys.executable, "-m", "compressmem.cli", "ask", "--context", str(source), "--question",
                                "What is this about?", "--max-new-tokens", "3", "--trace", *common],
                               capture_output=True, text=True, check=True)
        assert '"read"' in asked.stderr
    small_memory = tmp_path / "memagent.json"  # MemAgent's 1024-token memory is slow to write with a random model
    MemoryConfig.memagent(notes=NotesConfig("rewrite", max_tokens=8)).save(small_memory)
    memagent = subprocess.run([sys.executable, "-m", "compressmem.cli", "ask", "--context", str(document), "--question",
                               "Why?", "--max-new-tokens", "2", "--memagent", "--config", str(small_memory), "--trace",
                               *common], capture_output=True, text=True, check=True)
    assert '"read": [\n    0,\n    1,' in memagent.stderr
    assert "answered from the notes, unchecked" in memagent.stdout  # MemAgent always answers: nothing was judged


def test_ask_prints_the_answer_and_no_warning(tokenizer, essay_text, tmp_path):
    """Not quiet: stdout is the answer, then its sources or why there are none; stderr holds progress and the
    model's source, no warning of any library (transformers' deprecations included), and no traceback."""
    base = tmp_path / "base"
    tiny_model("llama", tokenizer).save_pretrained(base)
    tokenizer.save_pretrained(base)
    document = tmp_path / "doc.txt"
    document.write_text(essay_text[:2000], encoding="utf-8")
    for options in ([], ["--checkpoint", str(_gate_checkpoint(base, tmp_path))]):
        asked = subprocess.run([sys.executable, "-m", "compressmem.cli", "ask", "--model", str(base), "--context",
                                str(document), "--question", "What is this about?", "--max-new-tokens", "4", *options],
                               capture_output=True, text=True, check=True)
        answer, _, rest = asked.stdout.partition("\n\n")
        assert len(answer.splitlines()) <= 1
        assert rest.startswith(("Sources:", "(read ", "(the context never mentions")), asked.stdout
        assert "warn" not in asked.stderr.lower() and "deprecat" not in asked.stderr.lower(), asked.stderr
        assert "Traceback" not in asked.stderr


def _gate_checkpoint(base, tmp_path):
    """A checkpoint with the attention gate over select-compressed keys: compression runs a forward pass."""
    from compressmem import ChunkingConfig, CompressedMemoryModel, CompressionConfig, GateConfig, MemoryConfig

    config = MemoryConfig(chunking=ChunkingConfig(128), compression=CompressionConfig("select"),
                          gate=GateConfig("attention", layers=(1, 2)))
    folder = tmp_path / "ckpt"
    CompressedMemoryModel.from_pretrained(str(base), config=config, show_progress=False).save_pretrained(folder)
    return folder


def test_cli_reports_unreadable_files(tmp_path):
    binary = tmp_path / "data.bin"
    binary.write_bytes(b"\xff\xfe\x00\x80" * 10)
    done = subprocess.run([sys.executable, "-m", "compressmem.cli", "ask", "--context", str(binary), "--question", "x",
                           "--model", str(tmp_path), "--quiet"], capture_output=True, text=True)
    assert done.returncode != 0 and "not UTF-8 text" in done.stderr
    missing = subprocess.run([sys.executable, "-m", "compressmem.cli", "ask", "--context", str(tmp_path / "nope.txt"),
                              "--question", "x", "--model", str(tmp_path), "--quiet"], capture_output=True, text=True)
    assert missing.returncode != 0 and "cannot read" in missing.stderr
