"""What a pod step costs in traffic, read from the compiled program: the FF++ config's student
step (EfficientNet-B4 teacher -> B0 student, frequency augmentation) on 8 CPU devices, as it
compiles on an accelerator (the models' portable formulations, no CPU kernels). Its only
collectives are the gradient / BatchNorm statistic reductions and, under FSDP, parameter
gathers, every one of them parameter-shaped (a parameter, a statistic, or an FSDP shard of
one), and under FSDP the step compiled at two global batch sizes has the same list: no
collective grows with the batch (or with the pod, whose global batch grows with it).

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

pytestmark = pytest.mark.slow  # three compilations of the B4 -> B0 step, ~1 min each


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


def _key(shape) -> tuple[int, ...]:
    # XLA drops a 1x1 kernel's unit dims and may reduce a gradient transposed: compare sizes.
    return tuple(sorted(d for d in shape if d != 1))


def _parameter_shapes(config, fsdp: int) -> set[tuple[int, ...]]:
    """Every parameter's (and BatchNorm statistic's) shape, and under FSDP its shards'."""
    shapes = set()
    for stage in ("teacher", "student"):
        model = nnx.eval_shape(
            lambda s=stage: experiment.build_model(config, s, with_weights=False)
        )
        for leaf in jax.tree.leaves(nnx.state(model)):
            shape = tuple(leaf.shape)
            shapes.add(_key(shape))
            for i, d in enumerate(shape):
                if fsdp > 1 and d % fsdp == 0:
                    shapes.add(_key((*shape[:i], d // fsdp, *shape[i + 1 :])))
    return shapes


@pytest.mark.parametrize("fsdp", [1, 2], ids=["data8", "data4xfsdp2"])
def test_the_ffpp_student_step_moves_no_activations_between_devices(fsdp):
    assert jax.device_count() == 8
    small = _collectives(fsdp, 16)
    if fsdp > 1:
        # The same program at twice the batch: the same collectives. (The data mesh's are
        # checked below to be parameter-shaped; FSDP is where XLA once moved activations.)
        large = _collectives(fsdp, 32)

        def key(c):
            return c.op, c.arrays

        assert collections.Counter(map(key, small)) == collections.Counter(map(key, large)), (
            "collectives that change with the global batch: "
            f"{set(map(str, large)) ^ set(map(str, small))}"
        )
    ops = collections.Counter(c.op for c in small)
    params = _parameter_shapes(_config(fsdp), fsdp)
    if fsdp == 1:
        assert set(ops) == {"all-reduce"}, ops
    else:
        # Each FSDP-split parameter (>= fsdp_min_size elements) is gathered whole at use.
        assert set(ops) <= {"all-reduce", "all-gather", "reduce-scatter"}, ops
        gathered = [c for c in small if c.op == "all-gather"]
        assert gathered
        assert all(_key(shape) in params for c in gathered for _, shape in c.arrays)
    # Reductions carry gradients (parameter-shaped), BatchNorm statistics and the metrics.
    reduced = [_key(shape) for c in small if c.op == "all-reduce" for _, shape in c.arrays]
    unexplained = [s for s in reduced if s not in params and int(np.prod(s)) > 8]
    assert not unexplained, unexplained
