"""Quantized KV blocks: 8, 4 or 2 bits a value, packed, with half-precision scales and zero points per group.

The layout is KIVI's: keys are quantized per channel, in groups of `group` consecutive tokens (a key
channel's outliers stay inside their own channel), values per token, in groups of `group` consecutive
channels. Quantization is asymmetric: a group keeps its minimum (the zero point) and its step
(`(max - min) / (2**bits - 1)`), both float16, and each value the nearest step count. Values are packed
along the last dimension, `8 // bits` to a byte. A block is dequantised on the device that reads it,
one block at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import overload

import torch

from .config import BITS, CompressionConfig
from .errors import ConfigError

TOKENS, CHANNELS = -2, -1  # the axis a group runs along: keys group tokens, values group channels


@dataclass(frozen=True)
class Quantized:
    """A `[..., n, d]` tensor quantized to `bits` bits per value in groups of `group` along `axis`.

    `data` is uint8 `[..., n, d * bits // 8]`; `scales` and `zeros` are float16, `[..., ceil(n / group), d]`
    for groups along tokens and `[..., n, ceil(d / group)]` for groups along channels.
    """

    data: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    bits: int
    group: int
    axis: int

    @property
    def shape(self) -> torch.Size:
        return torch.Size((*self.data.shape[:-1], self.data.shape[-1] * 8 // self.bits))

    @property
    def device(self) -> torch.device:
        return self.data.device

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.data, self.scales, self.zeros))

    def to(self, device: torch.device | str | None, non_blocking: bool = False) -> Quantized:
        """The same quantized tensor on `device` (None: where it is)."""
        return replace(
            self,
            **{name: getattr(self, name).to(device, non_blocking=non_blocking) for name in ("data", "scales", "zeros")},
        )

    def __getitem__(self, index: int | slice | list[int] | torch.Tensor) -> Quantized:
        """Rows of the leading dimension (e.g. a block's layers)."""
        return replace(self, data=self.data[index], scales=self.scales[index], zeros=self.zeros[index])

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The tensor back, in `dtype`, on the device the packed data is on."""
        codes = unpack(self.data, self.bits).to(torch.float32)
        scales, zeros = self.scales.float(), self.zeros.float()
        n, d = codes.shape[-2], codes.shape[-1]
        dim, length = (-2, n) if self.axis == TOKENS else (-1, d)
        return (codes * spread(scales, self.group, length, dim) + spread(zeros, self.group, length, dim)).to(dtype)


def stored_quantization(compression: CompressionConfig | None) -> tuple[int, int] | None:
    """The `(bits, group)` a bank made with `compression` quantizes its blocks' KV to, or None when it stores them
    as computed (16 bits, or no compression settings: a bank of token ids)."""
    if compression is None or compression.bits == 16:
        return None
    if compression.group is None:
        raise ConfigError(
            f"compression.bits={compression.bits} quantizes, but compression.group is unset; CompressionConfig "
            "fills in the default group when it is made, so build it with its constructor."
        )
    return compression.bits, compression.group


def quantize(tensor: torch.Tensor, bits: int, group: int, axis: int) -> Quantized:
    """`tensor` `[..., n, d]` quantized to `bits` bits in groups of `group` along `axis` (`TOKENS` or `CHANNELS`)."""
    if bits not in BITS[1:]:
        raise ValueError(f"bits must be one of {list(BITS[1:])} to quantize, got {bits!r}.")
    if tensor.shape[-1] * bits % 8:
        raise ValueError(f"A last dimension of {tensor.shape[-1]} cannot be packed {8 // bits} values to a byte.")
    x = tensor.detach().float()
    n, d = x.shape[-2], x.shape[-1]
    grouped = _grouped(x, group, axis)  # [..., groups, group, d] (tokens) or [..., n, groups, group] (channels)
    reduce = -2 if axis == TOKENS else -1
    low, high = grouped.amin(dim=reduce), grouped.amax(dim=reduce)
    levels = (1 << bits) - 1
    scales = ((high - low) / levels).to(torch.float16)
    zeros = low.to(torch.float16)
    step = scales.float().clamp(min=torch.finfo(torch.float16).tiny)
    dim, length = (-2, n) if axis == TOKENS else (-1, d)
    full_step, full_zero = spread(step, group, length, dim), spread(zeros.float(), group, length, dim)
    codes = ((x - full_zero) / full_step).round().clamp(0, levels).to(torch.uint8)
    return Quantized(pack(codes, bits), scales, zeros, bits, group, axis)


def spread(per_group: torch.Tensor, group: int, length: int, dim: int) -> torch.Tensor:
    """Per-group values `per_group` repeated to every one of the `length` rows along `dim` (row i takes group
    i // group), by indexing rather than repeating `group` times, so a group longer than the axis costs nothing."""
    rows = torch.arange(length, device=per_group.device) // group
    return per_group.index_select(dim % per_group.dim(), rows)


def _grouped(x: torch.Tensor, group: int, axis: int) -> torch.Tensor:
    """`x` with `axis` cut into groups of `group`, the last group padded by repeating its last row (which
    changes no group's minimum or maximum)."""
    size = x.shape[axis]
    group = min(group, size)  # a group longer than the axis is the whole axis: one group, nothing to pad
    padded = -(-size // group) * group
    if padded != size:
        rows = torch.cat([torch.arange(size), torch.full((padded - size,), size - 1)]).to(x.device)
        x = x.index_select(axis % x.dim(), rows)
    if axis == TOKENS:
        return x.reshape(*x.shape[:-2], padded // group, group, x.shape[-1])
    return x.reshape(*x.shape[:-1], padded // group, group)


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes of `bits` bits, `8 // bits` to a byte along the last dimension (the first in the low bits)."""
    per_byte = 8 // bits
    if per_byte == 1:
        return codes.contiguous()
    shaped = codes.reshape(*codes.shape[:-1], codes.shape[-1] // per_byte, per_byte).to(torch.int32)
    shifts = torch.arange(per_byte, device=codes.device, dtype=torch.int32) * bits
    return (shaped << shifts).sum(dim=-1).to(torch.uint8)


def unpack(data: torch.Tensor, bits: int) -> torch.Tensor:
    """The codes `pack` packed into `data`."""
    per_byte = 8 // bits
    if per_byte == 1:
        return data
    shifts = torch.arange(per_byte, device=data.device, dtype=torch.int32) * bits
    codes = (data.to(torch.int32).unsqueeze(-1) >> shifts) & ((1 << bits) - 1)
    return codes.reshape(*data.shape[:-1], data.shape[-1] * per_byte).to(torch.uint8)


def fake_quantize(tensor: torch.Tensor, bits: int, group: int, axis: int) -> torch.Tensor:
    """`tensor` as it reads back after quantizing, with gradients passing straight through (training reads the
    blocks a quantized bank would hold)."""
    if bits == 16:
        return tensor
    read = quantize(tensor, bits, group, axis).dequantize(tensor.dtype).to(tensor.device)
    return tensor + (read - tensor).detach()


@overload
def dense(tensor: torch.Tensor | Quantized, dtype: torch.dtype | None = None) -> torch.Tensor: ...


@overload
def dense(tensor: None, dtype: torch.dtype | None = None) -> None: ...


@overload
def dense(tensor: torch.Tensor | Quantized | None, dtype: torch.dtype | None = None) -> torch.Tensor | None: ...


def dense(tensor: torch.Tensor | Quantized | None, dtype: torch.dtype | None = None) -> torch.Tensor | None:
    """A block's keys or values as a plain tensor, dequantised when they are stored quantized."""
    if isinstance(tensor, Quantized):
        return tensor.dequantize(dtype or torch.float32)
    return tensor if tensor is None or dtype is None else tensor.to(dtype)
