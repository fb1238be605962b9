"""`mkln export`: the best student checkpoint as an inference artifact."""

from __future__ import annotations

from absl import flags

from mkln_jax.cli import common

SUMMARY = "export the best student checkpoint as a jax.export artifact (also ONNX, SavedModel)"
USAGE = (
    "mkln export --config=CONFIG --workdir=DIR [--artifact=DIR] [--onnx] [--savedmodel] "
    "[--member=K]"
)
EXAMPLE = "mkln export --config=demo --workdir=runs/demo --artifact=runs/demo/export"
TAKES_CONFIG = True


def define_flags() -> list[str]:
    if "onnx" not in common.FLAGS:
        flags.DEFINE_bool("onnx", False, "Also write model.onnx (the `onnx` extra) and check it.")
    if "savedmodel" not in common.FLAGS:
        flags.DEFINE_bool(
            "savedmodel",
            False,
            "Also write a TensorFlow SavedModel (the `savedmodel` extra) and check it.",
        )
    return [
        *common.workdir(),
        *common.artifact(),
        *common.member(),
        *common.allow_unverified(),
        "onnx",
        "savedmodel",
    ]


def main(config, args: list[str]) -> int:
    from mkln_jax import config_lib, export, workdir

    FLAGS = common.FLAGS
    workdir.require_existing(FLAGS.workdir)
    config = common.select_member(config)
    out = export.export_stage(config, FLAGS.workdir, common.artifact_dir())
    print(f"exported the best student checkpoint to {out}")
    if FLAGS.onnx:
        import numpy as np

        from mkln_jax import onnx_export

        path = onnx_export.export_onnx(config, FLAGS.workdir, common.artifact_dir())
        size = config.data.image_size
        images = np.random.default_rng(0).integers(0, 256, (8, size, size, 3), dtype=np.uint8)
        diff = onnx_export.verify(common.artifact_dir(), images)
        print(f"ONNX: {path}; max |onnxruntime - JAX artifact| on 8 images: {diff:.2e}")
        if diff > 1e-4:
            raise config_lib.ConfigError(f"ONNX output differs from JAX by {diff:.2e} (> 1e-4)")
    if FLAGS.savedmodel:
        import numpy as np

        from mkln_jax import savedmodel_export

        path = savedmodel_export.export_savedmodel(common.artifact_dir())
        size = config.data.image_size
        images = np.random.default_rng(0).integers(0, 256, (8, size, size, 3), dtype=np.uint8)
        diff = savedmodel_export.verify(common.artifact_dir(), images)
        print(f"SavedModel: {path}; max |TensorFlow - JAX artifact| on 8 images: {diff:.2e}")
        if diff > 1e-4:
            raise config_lib.ConfigError(
                f"SavedModel output differs from JAX by {diff:.2e} (> 1e-4)"
            )
    return 0
