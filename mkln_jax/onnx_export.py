"""ONNX export (the `onnx` extra: jax2onnx + onnxruntime), for users who deploy outside JAX.

The exported graph takes float32 images [B, S, S, 3] with values 0..255 (uint8 pixels cast; B is
symbolic) and returns P(fake) [B]; normalisation is inside, weights are constants. `verify`
runs it under onnxruntime against the JAX artifact. Written beside the JAX artifact as
model.onnx, with its sha256 added to metadata.json.
"""

from __future__ import annotations

import hashlib
import json
import pathlib

import jax
import numpy as np

from mkln_jax import experiment, export, sharding
from mkln_jax.backends.cpu import native

ONNX_FILE = "model.onnx"


def export_onnx(config, workdir: str, artifact_dir: str, stage: str = "student") -> pathlib.Path:
    try:
        from jax2onnx import to_onnx
    except ImportError as err:
        raise ImportError(
            "ONNX export needs the `onnx` extra: pip install 'mkln_jax[onnx]' (jax2onnx, "
            "onnxruntime); it pins orbax-checkpoint < 0.11.37, so use its own environment"
        ) from err

    _compat_shims()
    mesh = sharding.make_mesh(1)
    model, frozen, _ = experiment.load_best(config, workdir, stage, mesh)
    params, stats = jax.device_get((frozen.params, frozen.batch_stats))

    out = pathlib.Path(artifact_dir)
    meta_path = out / "metadata.json"
    # the artifact's calibration (export.calibrate), so both programs give the same P(fake)
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    temperature = float((meta.get("calibration") or {}).get("temperature", 1.0))

    def infer(images):
        logits, _ = model.apply(params, stats, images / 255.0, False)
        return jax.nn.softmax(logits / temperature, axis=-1)[:, 1]

    size = config.data.image_size
    out.mkdir(parents=True, exist_ok=True)
    path = out / ONNX_FILE
    with native.portable():  # jax2onnx converts jnp operations, not our FFI kernels
        to_onnx(infer, [("B", size, size, 3)], return_mode="file", output_path=str(path))
    if meta_path.exists():
        meta["onnx"] = {
            "file": ONNX_FILE,
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "input": "float32 [B, S, S, 3], RGB pixel values 0..255",
            "output": "P(fake) float32 [B]",
        }
        meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return path


def _compat_shims() -> None:
    """jax2onnx 0.17 looks up `ClosedJaxpr` in jax._src.core, which newer jax (0.11+) moved to
    jax.extend.core; nested jit calls (jax.nn.relu6 is one) need it."""
    from jax._src import core as jcore

    if not hasattr(jcore, "ClosedJaxpr"):
        from jax.extend import core as extend_core

        jcore.ClosedJaxpr = extend_core.ClosedJaxpr


def run_onnx(path: str | pathlib.Path, images: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # jax2onnx's layout notes are not errors
    session = ort.InferenceSession(str(path), options)
    name = session.get_inputs()[0].name
    return session.run(None, {name: np.asarray(images, np.float32)})[0]


def verify(artifact_dir: str | pathlib.Path, images: np.ndarray) -> float:
    """Max |ONNX - JAX artifact| on `images` (uint8[b, S, S, 3])."""

    jax_out = export.Artifact(artifact_dir)(images)
    onnx_out = run_onnx(pathlib.Path(artifact_dir) / ONNX_FILE, images.astype(np.float32))
    return float(np.max(np.abs(onnx_out - jax_out)))
