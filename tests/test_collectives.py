"""What a pod step costs in traffic, read from the compiled program: the FF++ config's student
step (EfficientNet-B4 teacher -> B0 student, frequency augmentation) on 8 CPU devices, as it
compiles on an accelerator (the models' portable formulations, no CPU kernels). Its only
collectives are the gradient / BatchNorm statistic reductions and, under FSDP, parameter
gathers: compiled at two global batch sizes, the lists are the same, so no collective grows
with the batch (or with the pod, whose global batch grows with it).

The crops are 32 px instead of 256: the collectives carry parameters and statistics, whose
shapes do not depend on the image size, and the program compiles several times faster.
"""

import collections

import jax
import numpy as np
import pytest
from flax import nnx

from mkln_jax import aot, experiment, sharding
from mkln_jax.backends.cpu import native
from mkln_jax.configs import ffpp

pytestmark = pytest.mark.slow  # four compilations of the B4 -> B0 step, ~1 min each


def _config(fsdp: int):
    config = ffpp.get_config()
    config.data.image_size = 32
    config.teacher.pretrained = config.student.pretrained = ""
    config.train.mesh_fsdp = fsdp
    return config


def _collectives(fsdp: int, batch: int) -> list[aot.Collective]:
    config = _config(fsdp)
    mesh = sharding.make_mesh(-1, fsdp)
    with native.portable():
        compiled = aot.lower_train_step(config, "student", mesh, batch).compile()
    return aot.collectives(compiled.as_text())


def _squeezed(shape) -> tuple[int, ...]:
    return tuple(d for d in shape if d != 1)  # XLA drops a 1x1 kernel's unit dims


def _parameter_shapes(config) -> set[tuple[int, ...]]:
    shapes = set()
    for stage in ("teacher", "student"):
        model = nnx.eval_shape(
            lambda s=stage: experiment.build_model(config, s, with_weights=False)
        )
        shapes |= {_squeezed(x.shape) for x in jax.tree.leaves(nnx.state(model))}
    return shapes


@pytest.mark.parametrize("fsdp", [1, 2], ids=["data8", "data4xfsdp2"])
def test_the_ffpp_student_step_moves_no_activations_between_devices(fsdp):
    assert jax.device_count() == 8
    small, large = _collectives(fsdp, 16), _collectives(fsdp, 32)

    def key(c):
        return c.op, c.arrays

    assert collections.Counter(map(key, small)) == collections.Counter(map(key, large)), (
        "collectives that change with the global batch: "
        f"{set(map(str, large)) ^ set(map(str, small))}"
    )
    ops = collections.Counter(c.op for c in small)
    params = _parameter_shapes(_config(fsdp))
    if fsdp == 1:
        assert set(ops) == {"all-reduce"}, ops
    else:
        # Each FSDP-split parameter (>= fsdp_min_size elements) is gathered whole at use.
        assert set(ops) <= {"all-reduce", "all-gather", "reduce-scatter"}, ops
        gathered = [c for c in small if c.op == "all-gather"]
        assert gathered
        assert all(_squeezed(shape) in params for c in gathered for _, shape in c.arrays)
    # Reductions carry gradients (parameter-shaped), BatchNorm statistics and the metrics.
    reduced = [_squeezed(shape) for c in small if c.op == "all-reduce" for _, shape in c.arrays]
    per_channel = {s[-1:] for s in params}
    assert all(s in params or s in per_channel or int(np.prod(s)) <= 8 for s in reduced), [
        s for s in reduced if s not in params and s not in per_channel
    ]
