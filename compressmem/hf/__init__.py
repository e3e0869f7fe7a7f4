"""What touches transformers', PEFT's, bitsandbytes' and accelerate's internals: the attention probe, RoPE, caches,
placement of layers over devices, LoRA adapters, the base model's fingerprint, and tokenizer and `generate` calls
with the types they have at run time (`tokens`, `generation`). Nothing else in compressmem does;
and within it, every private name or undocumented behaviour of those libraries is used through `hf.compat` alone."""
