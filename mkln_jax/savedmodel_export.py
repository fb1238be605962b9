"""TensorFlow SavedModel export (the `savedmodel` extra: tensorflow-cpu), for TF Serving and other
TensorFlow deployments.

Made from the exported artifact itself, not from the checkpoint: jax2tf wraps the artifact's
jax.export program (lowered for every platform the artifact holds, so the SavedModel runs on
CPU, GPU and TPU alike) with its weights as TensorFlow variables. Signature `serving_default`:
`images` uint8 [B, S, S, 3] (B free), RGB face crops as `mkln predict` makes them ->
{"p_fake": float32 [B]}, calibration included. Written to <artifact>/saved_model, complete or
not at all (built beside it, then renamed), with each file's sha256 in metadata.json.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import shutil
import tempfile

import numpy as np

from mkln_jax import export, fileio

FOLDER = "saved_model"
SIGNATURE = "serving_default"


def _tensorflow():
    try:
        import tensorflow as tf
        from jax.experimental import jax2tf
    except ImportError as err:
        raise ImportError(
            "SavedModel export needs TensorFlow: pip install 'mkln_jax[savedmodel]' "
            "(tensorflow-cpu)"
        ) from err
    return tf, jax2tf


def export_savedmodel(artifact_dir: str | pathlib.Path) -> pathlib.Path:
    """Writes <artifact_dir>/saved_model from the artifact there; returns its path."""
    tf, jax2tf = _tensorflow()
    artifact_dir = pathlib.Path(artifact_dir)
    artifact = export.Artifact(artifact_dir)
    size = artifact.input_size
    names = sorted(artifact.weights)
    weights = [
        tf.Variable(np.asarray(artifact.weights[k]), trainable=False, name=f"w{i}")
        for i, k in enumerate(names)
    ]
    program = artifact.exported

    def infer(flat, images):
        return program.call(dict(zip(names, flat, strict=True)), images)

    converted = jax2tf.convert(
        infer,
        polymorphic_shapes=[None, f"(b, {size}, {size}, 3)"],
        with_gradient=False,
        native_serialization_platforms=tuple(program.platforms),
    )
    module = tf.Module()
    module.weights = weights

    @tf.function(
        input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8, name="images")],
        autograph=False,
    )
    def serve(images):
        return {"p_fake": converted(weights, images)}

    module.serve = serve
    final = artifact_dir / FOLDER
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{FOLDER}.", dir=artifact_dir))
    try:
        tf.saved_model.save(module, str(staging), signatures={SIGNATURE: serve})
        digests = {
            str(p.relative_to(staging)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(staging.rglob("*"))
            if p.is_file()
        }
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    meta = json.loads((artifact_dir / export.METADATA).read_text())
    meta["savedmodel"] = {
        "folder": FOLDER,
        "signature": SIGNATURE,
        "input": "images: uint8 [B, S, S, 3], RGB face crops",
        "output": "p_fake: float32 [B]",
        "platforms": list(program.platforms),
        "tensorflow_version": tf.__version__,
        "sha256": digests,
    }
    fileio.atomic_write(artifact_dir / export.METADATA, json.dumps(meta, indent=2) + "\n")
    return final


def run_savedmodel(path: str | pathlib.Path, images: np.ndarray) -> np.ndarray:
    tf, _ = _tensorflow()
    loaded = tf.saved_model.load(str(path))
    out = loaded.signatures[SIGNATURE](images=tf.constant(np.asarray(images, np.uint8)))
    return out["p_fake"].numpy()


def verify(artifact_dir: str | pathlib.Path, images: np.ndarray) -> float:
    """Max |SavedModel - JAX artifact| on `images` (uint8[b, S, S, 3])."""
    jax_out = export.Artifact(artifact_dir)(images)
    tf_out = run_savedmodel(pathlib.Path(artifact_dir) / FOLDER, images)
    return float(np.max(np.abs(tf_out - jax_out)))
