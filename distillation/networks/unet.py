"""PlainConvUNet and ResidualEncoderUNet with nnU-Net v2's constructor arguments and state-dict keys.

The module tree mirrors dynamic-network-architectures 0.4:

* ``encoder.stages.N.0.convs.M.{conv,norm,all_modules.K}`` (plain encoder; each stage is a
  ``Sequential`` holding one ``StackedConvBlocks``),
* ``encoder.stem.convs.0...`` and ``encoder.stages.N.blocks.B.{conv1,conv2,skip}`` (residual encoder),
* ``decoder.encoder...`` (the decoder keeps a reference to the encoder, so its weights appear twice,
  as in every nnU-Net checkpoint), ``decoder.stages``, ``decoder.transpconvs``, ``decoder.seg_layers``.

``forward(x)`` returns the full-resolution logits, or with ``decoder.deep_supervision`` set a list of
logits from highest to lowest resolution. ``forward_with_features(x)`` also returns the encoder's
per-stage outputs (highest resolution first) for knowledge distillation without hooks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from distillation.networks.blocks import (
    BasicBlockD,
    BottleneckD,
    StackedConvBlocks,
    StackedResidualBlocks,
    as_list,
    conv_dim,
    matching_transposed_conv,
)

__all__ = ["PlainConvEncoder", "ResidualEncoder", "UNetDecoder", "PlainConvUNet", "ResidualEncoderUNet"]

IntOrSeq = int | Sequence[int]
Outputs = torch.Tensor | list[torch.Tensor]


def _per_stage(name: str, value: object, n: int) -> list:
    if isinstance(value, (int, str)) or value is None:
        return [value] * n
    values = list(value)  # type: ignore[call-overload]
    if len(values) != n:
        raise ValueError(f"{name} must have one entry per stage ({n}), got {len(values)}: {values}")
    return values


class _EncoderMixin:
    """What a decoder needs to know about its encoder."""

    def _remember(self, conv_op: type[nn.Module], features: list[int], strides: list, kernel_sizes: list,
                  conv_bias: bool, norm_op: type[nn.Module] | None, norm_op_kwargs: dict | None,
                  dropout_op: type[nn.Module] | None, dropout_op_kwargs: dict | None,
                  nonlin: type[nn.Module] | None, nonlin_kwargs: dict | None) -> None:
        self.output_channels = features
        self.strides = [as_list(conv_op, s) for s in strides]
        self.conv_op = conv_op
        self.norm_op = norm_op
        self.norm_op_kwargs = norm_op_kwargs
        self.nonlin = nonlin
        self.nonlin_kwargs = nonlin_kwargs
        self.dropout_op = dropout_op
        self.dropout_op_kwargs = dropout_op_kwargs
        self.conv_bias = conv_bias
        self.kernel_sizes = kernel_sizes


class PlainConvEncoder(nn.Module, _EncoderMixin):
    def __init__(self, input_channels: int, n_stages: int, features_per_stage: IntOrSeq,
                 conv_op: type[nn.Module], kernel_sizes: IntOrSeq | Sequence[IntOrSeq],
                 strides: IntOrSeq | Sequence[IntOrSeq], n_conv_per_stage: IntOrSeq, conv_bias: bool = False,
                 norm_op: type[nn.Module] | None = None, norm_op_kwargs: dict | None = None,
                 dropout_op: type[nn.Module] | None = None, dropout_op_kwargs: dict | None = None,
                 nonlin: type[nn.Module] | None = None, nonlin_kwargs: dict | None = None,
                 return_skips: bool = True, nonlin_first: bool = False) -> None:
        super().__init__()
        kernel_sizes = _per_stage("kernel_sizes", kernel_sizes, n_stages)
        features = [int(f) for f in _per_stage("features_per_stage", features_per_stage, n_stages)]
        n_conv = _per_stage("n_conv_per_stage", n_conv_per_stage, n_stages)
        strides = _per_stage("strides", strides, n_stages)
        stages = []
        for s in range(n_stages):
            stages.append(nn.Sequential(StackedConvBlocks(
                n_conv[s], conv_op, input_channels, features[s], kernel_sizes[s], strides[s], conv_bias,
                norm_op, norm_op_kwargs, dropout_op, dropout_op_kwargs, nonlin, nonlin_kwargs, nonlin_first)))
            input_channels = features[s]
        self.stages = nn.Sequential(*stages)
        self.return_skips = return_skips
        self._remember(conv_op, features, strides, kernel_sizes, conv_bias, norm_op, norm_op_kwargs,
                       dropout_op, dropout_op_kwargs, nonlin, nonlin_kwargs)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor] | torch.Tensor:
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return skips if self.return_skips else skips[-1]


class ResidualEncoder(nn.Module, _EncoderMixin):
    def __init__(self, input_channels: int, n_stages: int, features_per_stage: IntOrSeq,
                 conv_op: type[nn.Module], kernel_sizes: IntOrSeq | Sequence[IntOrSeq],
                 strides: IntOrSeq | Sequence[IntOrSeq], n_blocks_per_stage: IntOrSeq, conv_bias: bool = False,
                 norm_op: type[nn.Module] | None = None, norm_op_kwargs: dict | None = None,
                 dropout_op: type[nn.Module] | None = None, dropout_op_kwargs: dict | None = None,
                 nonlin: type[nn.Module] | None = None, nonlin_kwargs: dict | None = None,
                 block: type[nn.Module] = BasicBlockD, bottleneck_channels: IntOrSeq | None = None,
                 return_skips: bool = True, stem_channels: int | None = None) -> None:
        super().__init__()
        kernel_sizes = _per_stage("kernel_sizes", kernel_sizes, n_stages)
        features = [int(f) for f in _per_stage("features_per_stage", features_per_stage, n_stages)]
        n_blocks = _per_stage("n_blocks_per_stage", n_blocks_per_stage, n_stages)
        strides = _per_stage("strides", strides, n_stages)
        bottleneck = _per_stage("bottleneck_channels", bottleneck_channels, n_stages)
        stem_channels = features[0] if stem_channels is None else stem_channels
        self.stem = StackedConvBlocks(1, conv_op, input_channels, stem_channels, kernel_sizes[0], 1, conv_bias,
                                      norm_op, norm_op_kwargs, dropout_op, dropout_op_kwargs, nonlin,
                                      nonlin_kwargs)
        input_channels = stem_channels
        stages = []
        for s in range(n_stages):
            stages.append(StackedResidualBlocks(
                n_blocks[s], conv_op, input_channels, features[s], kernel_sizes[s], strides[s], conv_bias,
                norm_op, norm_op_kwargs, dropout_op, dropout_op_kwargs, nonlin, nonlin_kwargs,
                block=block, bottleneck_channels=bottleneck[s]))
            input_channels = features[s]
        self.stages = nn.Sequential(*stages)
        self.return_skips = return_skips
        self._remember(conv_op, features, strides, kernel_sizes, conv_bias, norm_op, norm_op_kwargs,
                       dropout_op, dropout_op_kwargs, nonlin, nonlin_kwargs)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor] | torch.Tensor:
        x = self.stem(x)
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return skips if self.return_skips else skips[-1]


class UNetDecoder(nn.Module):
    """Transposed conv up, concatenate the skip, ``n_conv_per_stage`` convs, a 1×1 seg layer per stage.

    Seg layers exist for every stage even without deep supervision, so weights trained either way load.
    """

    def __init__(self, encoder: PlainConvEncoder | ResidualEncoder, num_classes: int,
                 n_conv_per_stage: IntOrSeq, deep_supervision: bool, nonlin_first: bool = False) -> None:
        super().__init__()
        self.deep_supervision = deep_supervision
        self.encoder = encoder
        self.num_classes = num_classes
        n_enc = len(encoder.output_channels)
        n_conv = _per_stage("n_conv_per_stage_decoder", n_conv_per_stage, n_enc - 1)
        transp_op = matching_transposed_conv(encoder.conv_op)
        stages, transpconvs, seg_layers = [], [], []
        for s in range(1, n_enc):
            below = encoder.output_channels[-s]
            skip = encoder.output_channels[-(s + 1)]
            stride = encoder.strides[-s]
            transpconvs.append(transp_op(below, skip, stride, stride, bias=encoder.conv_bias))
            stages.append(StackedConvBlocks(
                n_conv[s - 1], encoder.conv_op, 2 * skip, skip, encoder.kernel_sizes[-(s + 1)], 1,
                encoder.conv_bias, encoder.norm_op, encoder.norm_op_kwargs, encoder.dropout_op,
                encoder.dropout_op_kwargs, encoder.nonlin, encoder.nonlin_kwargs, nonlin_first))
            seg_layers.append(encoder.conv_op(skip, num_classes, 1, 1, 0, bias=True))
        self.stages = nn.ModuleList(stages)
        self.transpconvs = nn.ModuleList(transpconvs)
        self.seg_layers = nn.ModuleList(seg_layers)

    def forward(self, skips: Sequence[torch.Tensor]) -> Outputs:
        lres = skips[-1]
        outputs = []
        last = len(self.stages) - 1
        for s in range(len(self.stages)):
            x = self.transpconvs[s](lres)
            x = torch.cat((x, skips[-(s + 2)]), 1)
            x = self.stages[s](x)
            if self.deep_supervision:
                outputs.append(self.seg_layers[s](x))
            elif s == last:
                outputs.append(self.seg_layers[-1](x))
            lres = x
        outputs = outputs[::-1]
        return outputs if self.deep_supervision else outputs[0]


def _he_init(module: nn.Module, neg_slope: float = 1e-2) -> None:
    """nnU-Net's InitWeights_He(1e-2): Kaiming normal for (transposed) convs, zero bias."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                           nn.ConvTranspose3d)):
        nn.init.kaiming_normal_(module.weight, a=neg_slope)
        if module.bias is not None:
            nn.init.constant_(module.bias, 0)


class _UNetBase(nn.Module):
    encoder: PlainConvEncoder | ResidualEncoder
    decoder: UNetDecoder

    def forward(self, x: torch.Tensor) -> Outputs:
        return self.decoder(self.encoder(x))

    def forward_with_features(self, x: torch.Tensor) -> tuple[Outputs, list[torch.Tensor]]:
        """(outputs as ``forward`` gives them, encoder stage outputs highest resolution first)."""
        skips = self.encoder(x)
        return self.decoder(skips), list(skips)

    @property
    def features_per_stage(self) -> list[int]:
        return list(self.encoder.output_channels)

    @property
    def spatial_dims(self) -> int:
        return conv_dim(self.encoder.conv_op)


class PlainConvUNet(_UNetBase):
    """nnU-Net's default U-Net (DNA ``PlainConvUNet``), same arguments and state-dict keys."""

    def __init__(self, input_channels: int, n_stages: int, features_per_stage: IntOrSeq,
                 conv_op: type[nn.Module], kernel_sizes: IntOrSeq | Sequence[IntOrSeq],
                 strides: IntOrSeq | Sequence[IntOrSeq], n_conv_per_stage: IntOrSeq, num_classes: int,
                 n_conv_per_stage_decoder: IntOrSeq, conv_bias: bool = False,
                 norm_op: type[nn.Module] | None = None, norm_op_kwargs: dict | None = None,
                 dropout_op: type[nn.Module] | None = None, dropout_op_kwargs: dict | None = None,
                 nonlin: type[nn.Module] | None = None, nonlin_kwargs: dict | None = None,
                 deep_supervision: bool = False, nonlin_first: bool = False) -> None:
        super().__init__()
        self.key_to_encoder = "encoder.stages"
        self.key_to_stem = "encoder.stages.0"
        self.keys_to_in_proj = ("encoder.stages.0.0.convs.0.all_modules.0", "encoder.stages.0.0.convs.0.conv")
        self.encoder = PlainConvEncoder(input_channels, n_stages, features_per_stage, conv_op, kernel_sizes,
                                        strides, n_conv_per_stage, conv_bias, norm_op, norm_op_kwargs,
                                        dropout_op, dropout_op_kwargs, nonlin, nonlin_kwargs,
                                        return_skips=True, nonlin_first=nonlin_first)
        self.decoder = UNetDecoder(self.encoder, num_classes, n_conv_per_stage_decoder, deep_supervision,
                                   nonlin_first=nonlin_first)

    @staticmethod
    def initialize(module: nn.Module) -> None:
        _he_init(module)


class ResidualEncoderUNet(_UNetBase):
    """nnU-Net's ResEnc U-Net (DNA ``ResidualEncoderUNet``), same arguments and state-dict keys."""

    def __init__(self, input_channels: int, n_stages: int, features_per_stage: IntOrSeq,
                 conv_op: type[nn.Module], kernel_sizes: IntOrSeq | Sequence[IntOrSeq],
                 strides: IntOrSeq | Sequence[IntOrSeq], n_blocks_per_stage: IntOrSeq, num_classes: int,
                 n_conv_per_stage_decoder: IntOrSeq, conv_bias: bool = False,
                 norm_op: type[nn.Module] | None = None, norm_op_kwargs: dict | None = None,
                 dropout_op: type[nn.Module] | None = None, dropout_op_kwargs: dict | None = None,
                 nonlin: type[nn.Module] | None = None, nonlin_kwargs: dict | None = None,
                 deep_supervision: bool = False, block: type[nn.Module] = BasicBlockD,
                 bottleneck_channels: IntOrSeq | None = None, stem_channels: int | None = None) -> None:
        super().__init__()
        self.key_to_encoder = "encoder.stages"
        self.key_to_stem = "encoder.stem"
        self.keys_to_in_proj = ("encoder.stem.convs.0.conv", "encoder.stem.convs.0.all_modules.0")
        self.encoder = ResidualEncoder(input_channels, n_stages, features_per_stage, conv_op, kernel_sizes,
                                       strides, n_blocks_per_stage, conv_bias, norm_op, norm_op_kwargs,
                                       dropout_op, dropout_op_kwargs, nonlin, nonlin_kwargs, block,
                                       bottleneck_channels, return_skips=True, stem_channels=stem_channels)
        self.decoder = UNetDecoder(self.encoder, num_classes, n_conv_per_stage_decoder, deep_supervision)

    @staticmethod
    def initialize(module: nn.Module) -> None:
        _he_init(module)
        # init_last_bn_before_add_to_0: the last norm of each residual branch starts at zero.
        if isinstance(module, BasicBlockD) and hasattr(module.conv2, "norm"):
            if getattr(module.conv2.norm, "weight", None) is not None:
                nn.init.constant_(module.conv2.norm.weight, 0)
                nn.init.constant_(module.conv2.norm.bias, 0)
        if isinstance(module, BottleneckD) and hasattr(module.conv3, "norm"):
            if getattr(module.conv3.norm, "weight", None) is not None:
                nn.init.constant_(module.conv3.norm.weight, 0)
                nn.init.constant_(module.conv3.norm.bias, 0)
