"""nnU-Net v2-compatible U-Nets (same constructor arguments and state-dict keys as
dynamic-network-architectures 0.4) and the width-factor student family built from them."""

from distillation.networks.blocks import (
    BasicBlockD,
    BottleneckD,
    ConvDropoutNormReLU,
    StackedConvBlocks,
    StackedResidualBlocks,
)
from distillation.networks.build import (
    ARCHITECTURES,
    DEFAULT_MIN_FEATURES,
    build_network,
    count_gflops,
    count_parameters,
    default_plans_arch,
    pool_and_conv_props,
    resolve_arch_kwargs,
    scale_features,
)
from distillation.networks.unet import (
    PlainConvEncoder,
    PlainConvUNet,
    ResidualEncoder,
    ResidualEncoderUNet,
    UNetDecoder,
)

__all__ = [
    "ARCHITECTURES",
    "DEFAULT_MIN_FEATURES",
    "BasicBlockD",
    "BottleneckD",
    "ConvDropoutNormReLU",
    "PlainConvEncoder",
    "PlainConvUNet",
    "ResidualEncoder",
    "ResidualEncoderUNet",
    "StackedConvBlocks",
    "StackedResidualBlocks",
    "UNetDecoder",
    "build_network",
    "count_gflops",
    "count_parameters",
    "default_plans_arch",
    "pool_and_conv_props",
    "resolve_arch_kwargs",
    "scale_features",
]
