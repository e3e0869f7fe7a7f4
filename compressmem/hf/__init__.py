"""What touches transformers', PEFT's, bitsandbytes' and accelerate's internals: the attention probe, RoPE, caches,
placement of layers over devices, LoRA adapters, the base model's fingerprint, and decoding token ids to text
with its precise type. Nothing else in compressmem does;
and within it, every private name or undocumented behaviour of those libraries is used through `hf.compat` alone."""
