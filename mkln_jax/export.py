"""The inference artifact: a `jax.export` program (StableHLO) with a symbolic batch dimension,
its weights as a separate argument, and the metadata inference needs.

Layout of an artifact folder:
    model.jaxexport   serialized jax.export.Exported: (weights, uint8[b, S, S, 3]) -> P(fake)[b]
    weights.npz       flat {"params/...": array, "batch_stats/...": array}
    metadata.json     format version, model, input size, normalisation, threshold, checksums
Loading needs only jax and numpy, not this project's model code.
"""

from __future__ import annotations

import hashlib
import io
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from mkln_jax import checkpoint, config_lib, experiment, fileio, metrics, models, scoring, sharding
from mkln_jax.backends.cpu import native
from mkln_jax.errors import MklnError
from mkln_jax.input_pipeline import splits

FORMAT_VERSION = 1
PROGRAM = "model.jaxexport"
WEIGHTS = "weights.npz"
EXPLAIN = "saliency.jaxexport"  # optional: input-gradient maps (`mkln predict --explain`)
# Lowered for each, wherever the export runs: an artifact exported on a GPU host or a TPU VM
# also scores on a CPU laptop, and the other way round (jax.export lowers without the device).
PLATFORMS = ("cpu", "cuda", "tpu")
METADATA = "metadata.json"


# metadata.json is a few KB; anything near this is not one of ours.
_MAX_METADATA_BYTES = 1 << 20


class ArtifactError(MklnError, ValueError):
    pass


def _flatten(tree) -> dict[str, np.ndarray]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(str(p.key) for p in path): np.asarray(leaf) for path, leaf in leaves}


def _unflatten(flat: dict, template):
    """Rebuilds the nested pure dict of `template` from "/"-joined keys (int keys restored)."""
    paths = [
        tuple(p.key for p in path) for path, _ in jax.tree_util.tree_flatten_with_path(template)[0]
    ]
    out: dict = {}
    for path in paths:
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = flat["/".join(str(k) for k in path)]
    return out


def _sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def config_hash(config: ml_collections.ConfigDict) -> str:
    return hashlib.sha256(config.to_json(sort_keys=True).encode()).hexdigest()[:16]


def export_stage(
    config: ml_collections.ConfigDict, workdir: str, out_dir: str, stage: str = "student"
) -> pathlib.Path:
    """Exports the best checkpoint of `stage` to `out_dir`; returns the folder.

    Every process of a multi-host run takes part (each restores and scores its share of the
    validation split for calibration); the weights are gathered to every host and process 0
    alone writes the files, the others waiting at a barrier."""
    # All devices, parameters replicated: an FSDP-trained checkpoint is resharded on restore,
    # so export runs on any host, whatever mesh trained the model.
    mesh = sharding.make_mesh(-1, 1)
    model, frozen, best_step = experiment.load_best(config, workdir, stage, mesh)
    host = sharding.to_host(frozen)
    params_template, stats_template = host.params, host.batch_stats
    params = nnx.to_pure_dict(params_template)
    batch_stats = nnx.to_pure_dict(stats_template)
    variables = {"params": params, "batch_stats": batch_stats}

    calibration = calibrate(config, model, frozen, mesh)
    temperature = calibration.get("temperature", 1.0)

    def logits_of(flat_weights, images01):
        pure = _unflatten(flat_weights, variables)
        p, s = params_template, stats_template
        p = jax.tree.map(lambda x: x, p)
        s = jax.tree.map(lambda x: x, s)
        nnx.replace_by_pure_dict(p, pure["params"])
        nnx.replace_by_pure_dict(s, pure["batch_stats"])
        logits, _ = model.apply(p, s, images01, train=False)
        return logits / temperature

    def infer(flat_weights, images):
        logits = logits_of(flat_weights, images.astype(jnp.float32) / 255.0)
        return jax.nn.softmax(logits, axis=-1)[:, 1]

    def explain(flat_weights, images):
        """Input-gradient saliency (Simonyan et al., 2014): |d margin / d pixel| summed over
        colour, each map scaled to [0, 1]: float32[b, S, S]."""

        def margin(x):
            logits = logits_of(flat_weights, x)
            return jnp.sum(logits[:, 1] - logits[:, 0])

        grads = jax.grad(margin)(images.astype(jnp.float32) / 255.0)
        maps = jnp.sum(jnp.abs(grads), axis=-1)
        return maps / jnp.maximum(jnp.max(maps, axis=(1, 2), keepdims=True), 1e-12)

    flat = _flatten(variables)
    size = config.data.image_size
    (batch,) = jax.export.symbolic_shape("b")
    weight_specs = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in flat.items()}
    image_spec = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.uint8)
    # Portable StableHLO: the jnp formulations, not our CPU-only FFI kernels (backends/cpu/native).
    with native.portable():
        exported = jax.export.export(jax.jit(infer), platforms=PLATFORMS)(weight_specs, image_spec)
        explained = jax.export.export(jax.jit(explain), platforms=PLATFORMS)(
            weight_specs, image_spec
        )

    out = pathlib.Path(out_dir)
    if jax.process_index() == 0:
        _write(out, config, stage, best_step, exported, explained, flat, calibration)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("mkln export written")
    return out


def _write(out: pathlib.Path, config, stage, best_step, exported, explained, flat, calibration):
    size = config.data.image_size
    out.mkdir(parents=True, exist_ok=True)
    # Each file replaced atomically, metadata (with the checksums) last: an interrupted export
    # leaves the old artifact or one that fails its checksums, never a silently mixed one.
    fileio.atomic_write(out / PROGRAM, bytes(exported.serialize()))
    fileio.atomic_write(out / EXPLAIN, bytes(explained.serialize()))
    weights = io.BytesIO()
    np.savez(weights, **flat)
    fileio.atomic_write(out / WEIGHTS, weights.getvalue())
    spec = models.spec(config[stage].model)
    pipeline = splits.face_pipeline(config.data)
    metadata = {
        "format_version": FORMAT_VERSION,
        "model": config[stage].model,
        "architecture": experiment.describe_model(config, stage),
        "stage": stage,
        "checkpoint_step": best_step,
        # False only with --allow_unverified, for a checkpoint that had no integrity record.
        "checkpoint_verified": not checkpoint.unverified_used(),
        "config_hash": config_hash(config),
        "input_size": size,
        "input": "uint8 RGB face crops [b, S, S, 3]; normalisation is inside the program",
        "normalisation": {"mean": list(spec.mean), "std": list(spec.std), "scale": 1 / 255},
        "face_crop": {"detector": pipeline["detector"], "margin": pipeline["margin"]},
        "face_pipeline": pipeline,
        "threshold": calibration.get("threshold", config.eval.threshold),
        "calibration": calibration,
        "num_frames": config.predict.num_frames,
        "aggregate": config.predict.get("aggregate", "mean"),
        "output": "P(fake) per image, float32[b]",
        "jax_version": jax.__version__,
        "platforms": list(exported.platforms),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "sha256": {name: _sha256(out / name) for name in (PROGRAM, WEIGHTS, EXPLAIN)},
    }
    fileio.atomic_write(out / METADATA, json.dumps(metadata, indent=2) + "\n")


def calibrate(config: ml_collections.ConfigDict, model, frozen, mesh) -> dict:
    """Temperature and verdict threshold fitted on the validation split (`config.export`),
    with the validation log loss / Brier / ECE before and after; {} when neither is asked."""
    rule = config.export.threshold
    if not config.export.calibrate and rule == "fixed":
        return {}
    try:
        source = splits.open_split(config.data, config_lib.data_dir(config), "val")
        index = splits.split_index(config.data, config_lib.data_dir(config), "val")
    except splits.MissingSplitError as err:
        raise ArtifactError(
            f"{err}; export fits its calibration there: prepare it, or set "
            "export.calibrate=False and export.threshold=fixed"
        ) from None
    margins = scoring.predict_margins(model, frozen, source, mesh, config.eval.batch_size)
    labels = index.labels
    temperature = metrics.fit_temperature(labels, margins) if config.export.calibrate else 1.0
    probs = metrics.sigmoid(margins / temperature)
    if rule == "eer":
        threshold = metrics.eer_threshold(labels, probs)
    elif rule.startswith("fpr:"):
        threshold = metrics.fpr_threshold(labels, probs, float(rule[4:]))
    else:
        threshold = float(config.eval.threshold)
    return {
        "temperature": temperature,
        # within (0, 1): a threshold at either end would call every face the same
        "threshold": float(np.clip(threshold, 1e-6, 1 - 1e-6)),
        "threshold_rule": rule,
        "fitted_on": "val",
        "val_frames": int(labels.size),
        "val_raw": metrics.calibration_summary(labels, metrics.sigmoid(margins)),
        "val_calibrated": metrics.calibration_summary(labels, probs),
    }


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value)


def validate_metadata(meta: dict) -> list[str]:
    """Every problem with the values inference uses (empty when they are usable)."""
    problems = []
    threshold = meta.get("threshold")
    if not _number(threshold) or not 0.0 < threshold < 1.0:
        problems.append(f"threshold must be a number in (0, 1), got {threshold!r}")
    size = meta.get("input_size")
    if not isinstance(size, int) or isinstance(size, bool) or not 16 <= size <= 4096:
        problems.append(f"input_size must be an integer in [16, 4096], got {size!r}")
    frames = meta.get("num_frames")
    if not isinstance(frames, int) or isinstance(frames, bool) or not 1 <= frames <= 10_000:
        problems.append(f"num_frames must be an integer in [1, 10000], got {frames!r}")
    calibration = meta.get("calibration", {})
    if not isinstance(calibration, dict):
        calibration = {"temperature": calibration}
    temperature = calibration.get("temperature", 1.0)
    if not _number(temperature) or not 1e-3 <= temperature <= 1e3:
        problems.append(f"calibration.temperature must be in [0.001, 1000], got {temperature!r}")
    if meta.get("aggregate", "mean") not in metrics.AGGREGATIONS:
        problems.append(
            f"aggregate must be one of {metrics.AGGREGATIONS}, got {meta['aggregate']!r}"
        )
    crop = meta.get("face_crop")
    margin = crop.get("margin") if isinstance(crop, dict) else None
    if not _number(margin) or not 1.0 <= margin <= 10.0:
        problems.append(f"face_crop.margin must be a number in [1, 10], got {margin!r}")
    return problems


class Artifact:
    """A loaded, verified artifact: `artifact(images uint8[b, S, S, 3]) -> P(fake) float32[b]`."""

    def __init__(self, directory: str | pathlib.Path):
        directory = pathlib.Path(directory)
        meta_path = directory / METADATA
        if not directory.is_dir():
            raise ArtifactError(
                f"{directory}: no such artifact folder (run `mkln export` to make one)"
            )
        if not meta_path.exists():
            raise ArtifactError(
                f"{directory}: no {METADATA}; not an mkln export (run `mkln export` to make one)"
            )
        try:
            self.metadata = json.loads(
                fileio.read_bytes_limited(meta_path, _MAX_METADATA_BYTES, "metadata")
            )
        except fileio.UnsafeInputError as err:
            raise ArtifactError(str(err)) from None
        except (ValueError, UnicodeDecodeError) as err:
            raise ArtifactError(f"{meta_path}: unreadable metadata ({err})") from None
        if not isinstance(self.metadata, dict):
            raise ArtifactError(f"{meta_path}: metadata must be a JSON object")
        version = self.metadata.get("format_version")
        if version != FORMAT_VERSION:
            raise ArtifactError(
                f"{directory}: format version {version}, this build reads "
                f"{FORMAT_VERSION}; re-export with this version of mkln"
            )
        checksums = self.metadata.get("sha256")
        # Only our two files, checked by name before anything is opened: metadata never makes
        # the loader read a path of its choosing.
        if not isinstance(checksums, dict) or set(checksums) not in (
            {PROGRAM, WEIGHTS},
            {PROGRAM, WEIGHTS, EXPLAIN},
        ):
            raise ArtifactError(
                f"{meta_path}: checksums for {PROGRAM} and {WEIGHTS} (and optionally "
                f"{EXPLAIN}) expected"
            )
        for name, expected in checksums.items():
            try:
                path = fileio.require_regular_file(fileio.inside(directory, name), "artifact file")
            except fileio.UnsafeInputError as err:
                raise ArtifactError(f"{err}; re-export the artifact") from None
            if _sha256(path) != expected:
                raise ArtifactError(
                    f"{path}: checksum mismatch (file changed or corrupt); re-export the artifact"
                )
        problems = validate_metadata(self.metadata)
        if problems:
            raise ArtifactError(f"{meta_path}: " + "; ".join(problems))
        try:
            self.exported = jax.export.deserialize((directory / PROGRAM).read_bytes())
            with np.load(directory / WEIGHTS, allow_pickle=False) as weights:
                self.weights = {k: jnp.asarray(weights[k]) for k in weights.files}
        except Exception as err:  # checksummed, so only a file we wrote wrongly gets here
            raise ArtifactError(f"{directory}: unreadable program or weights ({err})") from None
        self._explain = None
        if EXPLAIN in checksums:
            try:
                self._explain = jax.jit(
                    jax.export.deserialize((directory / EXPLAIN).read_bytes()).call
                )
            except Exception as err:  # checksummed, as above
                raise ArtifactError(f"{directory}: unreadable saliency program ({err})") from None
        self.input_size = int(self.metadata["input_size"])
        self.threshold = float(self.metadata["threshold"])
        # One jit around the deserialised program: compiled once per batch size, then called
        # without re-tracing (Exported.call alone re-dispatches through tracing every call).
        self._call = jax.jit(self.exported.call)

    def _checked(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images, np.uint8)
        if images.ndim != 4 or images.shape[1:] != (self.input_size, self.input_size, 3):
            raise ArtifactError(
                f"images must be uint8[b, {self.input_size}, {self.input_size}, "
                f"3], got {images.shape}"
            )
        return images

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(self._call(self.weights, self._checked(images)))

    @property
    def has_saliency(self) -> bool:
        return self._explain is not None

    def explain(self, images: np.ndarray) -> np.ndarray:
        """Saliency maps float32[b, S, S] in [0, 1] of the same crops (input gradients)."""
        if self._explain is None:
            raise ArtifactError("this artifact has no saliency program; re-export it")
        return np.asarray(self._explain(self.weights, self._checked(images)))
