"""Building blocks of nnU-Net's U-Nets, laid out module-for-module like
dynamic-network-architectures (DNA) 0.4 so that state-dict keys match exactly.

Attribute names and the order in which sub-modules are assigned are part of the
contract: ``ConvDropoutNormReLU`` registers ``conv``, ``dropout``, ``norm``,
``nonlin`` and then ``all_modules`` (which holds the same modules again), so a
state dict carries both ``convs.0.conv.weight`` and ``convs.0.all_modules.0.weight``
exactly as an nnU-Net checkpoint does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

__all__ = [
    "ConvDropoutNormReLU",
    "StackedConvBlocks",
    "BasicBlockD",
    "BottleneckD",
    "StackedResidualBlocks",
    "conv_dim",
    "as_list",
    "matching_transposed_conv",
    "matching_avg_pool",
]

IntOrSeq = int | Sequence[int]


def conv_dim(conv_op: type[nn.Module]) -> int:
    """Spatial dimension (1, 2 or 3) of a convolution class."""
    for dim, cls in ((3, nn.Conv3d), (2, nn.Conv2d), (1, nn.Conv1d)):
        if issubclass(conv_op, cls):
            return dim
    raise ValueError(f"conv_op must be torch.nn.Conv1d, Conv2d or Conv3d, got {conv_op!r}")


def as_list(conv_op: type[nn.Module], value: IntOrSeq) -> list[int]:
    """``3`` → ``[3, 3, 3]`` for a 3-D conv; sequences are returned as lists."""
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value]
    return [int(value)] * conv_dim(conv_op)


def matching_transposed_conv(conv_op: type[nn.Module]) -> type[nn.Module]:
    return {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[conv_dim(conv_op)]


def matching_avg_pool(conv_op: type[nn.Module]) -> type[nn.Module]:
    return {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}[conv_dim(conv_op)]


class ConvDropoutNormReLU(nn.Module):
    """conv → (dropout) → (norm) → (nonlin); ``nonlin_first`` swaps norm and nonlin."""

    def __init__(self, conv_op: type[nn.Module], input_channels: int, output_channels: int,
                 kernel_size: IntOrSeq, stride: IntOrSeq, conv_bias: bool = False,
                 norm_op: type[nn.Module] | None = None, norm_op_kwargs: dict | None = None,
                 dropout_op: type[nn.Module] | None = None, dropout_op_kwargs: dict | None = None,
                 nonlin: type[nn.Module] | None = None, nonlin_kwargs: dict | None = None,
                 nonlin_first: bool = False) -> None:
        super().__init__()
        self.input_channels = input_channels
        self.output_channels = output_channels
        self.stride = as_list(conv_op, stride)
        kernel = as_list(conv_op, kernel_size)
        norm_op_kwargs = norm_op_kwargs or {}
        nonlin_kwargs = nonlin_kwargs or {}
        ops: list[nn.Module] = []
        self.conv = conv_op(input_channels, output_channels, kernel, self.stride,
                            padding=[(k - 1) // 2 for k in kernel], dilation=1, bias=conv_bias)
        ops.append(self.conv)
        if dropout_op is not None:
            self.dropout = dropout_op(**(dropout_op_kwargs or {}))
            ops.append(self.dropout)
        if norm_op is not None:
            self.norm = norm_op(output_channels, **norm_op_kwargs)
            ops.append(self.norm)
        if nonlin is not None:
            self.nonlin = nonlin(**nonlin_kwargs)
            ops.append(self.nonlin)
        if nonlin_first and norm_op is not None and nonlin is not None:
            ops[-1], ops[-2] = ops[-2], ops[-1]
        self.all_modules = nn.Sequential(*ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.all_modules(x)


class StackedConvBlocks(nn.Module):
    """``num_convs`` ConvDropoutNormReLU; only the first one is strided."""

    def __init__(self, num_convs: int, conv_op: type[nn.Module], input_channels: int,
                 output_channels: int | Sequence[int], kernel_size: IntOrSeq, initial_stride: IntOrSeq,
                 conv_bias: bool = False, norm_op: type[nn.Module] | None = None,
                 norm_op_kwargs: dict | None = None, dropout_op: type[nn.Module] | None = None,
                 dropout_op_kwargs: dict | None = None, nonlin: type[nn.Module] | None = None,
                 nonlin_kwargs: dict | None = None, nonlin_first: bool = False) -> None:
        super().__init__()
        if not isinstance(output_channels, (list, tuple)):
            output_channels = [output_channels] * num_convs
        common: dict[str, Any] = dict(conv_bias=conv_bias, norm_op=norm_op, norm_op_kwargs=norm_op_kwargs,
                                      dropout_op=dropout_op, dropout_op_kwargs=dropout_op_kwargs,
                                      nonlin=nonlin, nonlin_kwargs=nonlin_kwargs, nonlin_first=nonlin_first)
        self.convs = nn.Sequential(
            ConvDropoutNormReLU(conv_op, input_channels, output_channels[0], kernel_size, initial_stride,
                                **common),
            *[ConvDropoutNormReLU(conv_op, output_channels[i - 1], output_channels[i], kernel_size, 1, **common)
              for i in range(1, num_convs)],
        )
        self.output_channels = output_channels[-1]
        self.initial_stride = as_list(conv_op, initial_stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convs(x)


def _skip_path(conv_op: type[nn.Module], input_channels: int, output_channels: int, stride: list[int],
               norm_op: type[nn.Module] | None, norm_op_kwargs: dict) -> nn.Module:
    has_stride = any(s != 1 for s in stride)
    needs_projection = input_channels != output_channels
    if not (has_stride or needs_projection):
        return nn.Identity()
    ops: list[nn.Module] = []
    if has_stride:
        ops.append(matching_avg_pool(conv_op)(stride, stride))
    if needs_projection:
        ops.append(ConvDropoutNormReLU(conv_op, input_channels, output_channels, 1, 1, False,
                                       norm_op, norm_op_kwargs, None, None, None, None))
    return nn.Sequential(*ops)


class BasicBlockD(nn.Module):
    """ResNet-D basic block: two k×k convs; the skip is avg-pool (if strided) then 1×1 conv + norm."""

    def __init__(self, conv_op: type[nn.Module], input_channels: int, output_channels: int,
                 kernel_size: IntOrSeq, stride: IntOrSeq, conv_bias: bool = False,
                 norm_op: type[nn.Module] | None = None, norm_op_kwargs: dict | None = None,
                 dropout_op: type[nn.Module] | None = None, dropout_op_kwargs: dict | None = None,
                 nonlin: type[nn.Module] | None = None, nonlin_kwargs: dict | None = None) -> None:
        super().__init__()
        self.input_channels = input_channels
        self.output_channels = output_channels
        self.stride = as_list(conv_op, stride)
        kernel = as_list(conv_op, kernel_size)
        norm_op_kwargs = norm_op_kwargs or {}
        nonlin_kwargs = nonlin_kwargs or {}
        self.conv1 = ConvDropoutNormReLU(conv_op, input_channels, output_channels, kernel, self.stride, conv_bias,
                                         norm_op, norm_op_kwargs, dropout_op, dropout_op_kwargs, nonlin,
                                         nonlin_kwargs)
        self.conv2 = ConvDropoutNormReLU(conv_op, output_channels, output_channels, kernel, 1, conv_bias, norm_op,
                                         norm_op_kwargs, None, None, None, None)
        self.nonlin2 = nonlin(**nonlin_kwargs) if nonlin is not None else nn.Identity()
        self.skip = _skip_path(conv_op, input_channels, output_channels, self.stride, norm_op, norm_op_kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.skip(x)
        out = self.conv2(self.conv1(x))
        return self.nonlin2(out + residual)


class BottleneckD(nn.Module):
    """ResNet-D bottleneck: 1×1 → k×k (strided) → 1×1, skip as in BasicBlockD."""

    def __init__(self, conv_op: type[nn.Module], input_channels: int, bottleneck_channels: int,
                 output_channels: int, kernel_size: IntOrSeq, stride: IntOrSeq, conv_bias: bool = False,
                 norm_op: type[nn.Module] | None = None, norm_op_kwargs: dict | None = None,
                 dropout_op: type[nn.Module] | None = None, dropout_op_kwargs: dict | None = None,
                 nonlin: type[nn.Module] | None = None, nonlin_kwargs: dict | None = None) -> None:
        super().__init__()
        self.input_channels = input_channels
        self.output_channels = output_channels
        self.bottleneck_channels = bottleneck_channels
        self.stride = as_list(conv_op, stride)
        kernel = as_list(conv_op, kernel_size)
        norm_op_kwargs = norm_op_kwargs or {}
        nonlin_kwargs = nonlin_kwargs or {}
        self.conv1 = ConvDropoutNormReLU(conv_op, input_channels, bottleneck_channels, 1, 1, conv_bias,
                                         norm_op, norm_op_kwargs, None, None, nonlin, nonlin_kwargs)
        self.conv2 = ConvDropoutNormReLU(conv_op, bottleneck_channels, bottleneck_channels, kernel, self.stride,
                                         conv_bias, norm_op, norm_op_kwargs, dropout_op, dropout_op_kwargs,
                                         nonlin, nonlin_kwargs)
        self.conv3 = ConvDropoutNormReLU(conv_op, bottleneck_channels, output_channels, 1, 1, conv_bias, norm_op,
                                         norm_op_kwargs, None, None, None, None)
        self.nonlin3 = nonlin(**nonlin_kwargs) if nonlin is not None else nn.Identity()
        self.skip = _skip_path(conv_op, input_channels, output_channels, self.stride, norm_op, norm_op_kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.skip(x)
        out = self.conv3(self.conv2(self.conv1(x)))
        return self.nonlin3(out + residual)


class StackedResidualBlocks(nn.Module):
    """``n_blocks`` residual blocks; only the first is strided. Held in ``blocks`` (DNA's key)."""

    def __init__(self, n_blocks: int, conv_op: type[nn.Module], input_channels: int,
                 output_channels: int | Sequence[int], kernel_size: IntOrSeq, initial_stride: IntOrSeq,
                 conv_bias: bool = False, norm_op: type[nn.Module] | None = None,
                 norm_op_kwargs: dict | None = None, dropout_op: type[nn.Module] | None = None,
                 dropout_op_kwargs: dict | None = None, nonlin: type[nn.Module] | None = None,
                 nonlin_kwargs: dict | None = None, block: type[nn.Module] = BasicBlockD,
                 bottleneck_channels: int | Sequence[int] | None = None) -> None:
        super().__init__()
        if n_blocks < 1:
            raise ValueError(f"n_blocks must be at least 1, got {n_blocks}")
        if block not in (BasicBlockD, BottleneckD):
            raise ValueError(f"block must be BasicBlockD or BottleneckD, got {block!r}")
        if not isinstance(output_channels, (list, tuple)):
            output_channels = [output_channels] * n_blocks
        if not isinstance(bottleneck_channels, (list, tuple)):
            bottleneck_channels = [bottleneck_channels] * n_blocks
        tail = (conv_bias, norm_op, norm_op_kwargs, dropout_op, dropout_op_kwargs, nonlin, nonlin_kwargs)
        blocks: list[nn.Module] = []
        for n in range(n_blocks):
            cin = input_channels if n == 0 else output_channels[n - 1]
            stride = initial_stride if n == 0 else 1
            if block is BasicBlockD:
                blocks.append(BasicBlockD(conv_op, cin, output_channels[n], kernel_size, stride, *tail))
            else:
                blocks.append(BottleneckD(conv_op, cin, bottleneck_channels[n], output_channels[n], kernel_size,
                                          stride, *tail))
        self.blocks = nn.Sequential(*blocks)
        self.initial_stride = as_list(conv_op, initial_stride)
        self.output_channels = output_channels[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)
