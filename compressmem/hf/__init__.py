"""What touches transformers', PEFT's, bitsandbytes' and accelerate's internals: the attention probe, RoPE, caches,
placement of layers over devices, LoRA adapters, and the base model's fingerprint. Nothing else in compressmem does;
and within it, every private name or undocumented behaviour of those libraries is used through `hf.compat` alone."""
