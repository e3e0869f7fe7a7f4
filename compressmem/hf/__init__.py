"""What touches transformers', PEFT's and accelerate's internals: the attention probe, RoPE, caches, placement of
layers over devices, LoRA adapters, and the base model's fingerprint. Nothing else in compressmem does."""
