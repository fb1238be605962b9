"""A prepared dataset's splits as random-access TFDS data sources, and what they are made of:
the dataset's name from its config, the split's labels, methods and video ids (read without
decoding an image), and the training subset. The online pipeline is in `loader.py`."""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Sequence

import numpy as np
import tensorflow_datasets as tfds

from mkln_jax.input_pipeline.build import demo
from mkln_jax.input_pipeline.build.datasets import mkln_demo


def demo_settings(data_config) -> demo.DemoSettings:
    return demo.DemoSettings(
        image_size=data_config.image_size,
        clip_frames=data_config.clip_frames,
        frames_per_clip=data_config.frames_per_clip,
        margin=data_config.margin,
        methods=tuple(data_config.methods),
        seed=0,
    )


REAL_DATASETS = ("ffpp", "celebdf", "folder", "deepfakebench")


def forgery_source(data_config):
    """The `forgery.Source` of a real dataset config."""
    from mkln_jax.input_pipeline.build.datasets import forgery

    return forgery.Source(
        kind=data_config.name,
        root=data_config.root,
        compression=data_config.compression,
        methods=tuple(data_config.methods),
        splits_dir=data_config.splits_dir,
        version=data_config.version,
        index_json=data_config.index_json,
    )


def preprocess_settings(data_config):
    from mkln_jax.input_pipeline.build import preprocess

    return preprocess.Settings(
        num_frames=data_config.num_frames,
        crop_size=data_config.image_size,
        margin=data_config.margin,
        detector=data_config.detector,
        shape_predictor=data_config.shape_predictor,
        every_face=bool(data_config.get("every_face", False)),
    )


def face_pipeline(data_config) -> dict:
    """How the dataset's face crops were made, for an artifact to reproduce at inference
    (`mkln predict`): detector, landmarks, alignment, margin, crop size, frames, colour."""
    if data_config.name == "mkln_demo":
        detector, shape_predictor, align = "haar", "", False
    elif data_config.name == "deepfakebench":
        detector, shape_predictor, align = "deepfakebench", "", True  # its own crops
    else:
        detector, shape_predictor = data_config.detector, data_config.shape_predictor
        align = True  # preprocess.Settings.align: wherever the detector gives landmarks
    return {
        "dataset": data_config.name,
        "detector": detector,
        "shape_predictor": shape_predictor,
        "align": align,
        "alignment_template": "arcface 5-point" if align else "",
        "margin": float(data_config.margin),
        "crop_size": int(data_config.image_size),
        "num_frames": int(
            data_config.frames_per_clip
            if data_config.name == "mkln_demo"
            else data_config.num_frames
        ),
        "colour": "RGB",
        "tracking": (
            "every face, IoU tracking"
            if data_config.get("every_face", False)
            else "largest face, then IoU tracking"
        ),
    }


def dataset_name(data_config) -> str:
    """<builder name>/<config name>: the folder under the TFDS data dir."""
    if data_config.name == "mkln_demo":
        return f"mkln_demo/{mkln_demo.config_name(demo_settings(data_config))}"
    if data_config.name in REAL_DATASETS:
        from mkln_jax.input_pipeline.build.datasets import forgery

        source = forgery_source(data_config)
        builder = forgery.BUILDER_NAMES[data_config.name]
        return f"{builder}/{source.config_name(preprocess_settings(data_config))}"
    raise ValueError(
        f"unknown dataset {data_config.name!r}; known: mkln_demo, {', '.join(REAL_DATASETS)}"
    )


def index_decoders(dataset: str, images: bool = False) -> dict | None:
    """TFDS decoders that leave image features as their stored PNG bytes: masks always (no
    step uses them), images too unless `images`."""
    features = ("image",) if dataset == "mkln_demo" else ("image", "mask")
    skipped = [f for f in features if f != "image" or not images]
    return {f: tfds.decode.SkipDecoding() for f in skipped} or None


class MissingSplitError(FileNotFoundError):
    """A prepared dataset without the split asked for (its download had no videos for it)."""


def open_split(data_config, data_dir: pathlib.Path, split: str, images: bool = True):
    """The split as a random-access TFDS data source; a clear error if it was never prepared.
    Masks are never decoded (no step uses them); with images=False, neither are the images
    (their PNG bytes come back as they are stored), for reading labels and ids."""
    name = dataset_name(data_config)
    decoders = index_decoders(data_config.name, images)
    try:
        if data_config.name == "mkln_demo":
            return tfds.data_source(
                name, data_dir=str(data_dir), split=split, download=False, decoders=decoders
            )
        versions = sorted(pathlib.Path(data_dir, name).glob("*.*.*/dataset_info.json"))
        if not versions:
            raise FileNotFoundError(name)
        builder = tfds.builder_from_directory(str(versions[-1].parent))
        written = sorted(builder.info.splits)
        if split not in written:
            raise MissingSplitError(
                f"dataset {name} under {data_dir} has no {split!r} split: `prepare` found no "
                f"videos for it (written: {', '.join(written)}). Fix: prepare a download that "
                f"holds {split} videos, or use this dataset only where {', '.join(written)} "
                "is enough (e.g. --eval_data for a cross-dataset test)."
            )
        return builder.as_data_source(split=split, decoders=decoders)
    except MissingSplitError:
        raise
    except Exception as err:  # tfds raises several types for a missing dataset
        which = "" if data_config.name == "mkln_demo" else f"{data_config.name} "
        raise FileNotFoundError(
            f"dataset {name} not found under {data_dir} ({type(err).__name__}). Fix: run "
            f"`mkln prepare {which}--config=<the same config>` first."
        ) from err


@dataclasses.dataclass
class SplitIndex:
    labels: np.ndarray  # int32[N]
    methods: np.ndarray  # str[N]
    video_ids: np.ndarray  # str[N]


def split_index(data_config, data_dir: pathlib.Path, split: str) -> SplitIndex:
    """Labels, methods and video ids of a split, read without decoding a single image."""
    return read_index(open_split(data_config, data_dir, split, images=False))


def read_index(source) -> SplitIndex:
    labels, methods, video_ids = [], [], []
    for i in range(len(source)):
        record = source[i]
        labels.append(int(record["label"]))
        methods.append(_text(record["method"]))
        video_ids.append(_text(record["video_id"]))
    return SplitIndex(np.asarray(labels, np.int32), np.asarray(methods), np.asarray(video_ids))


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def training_indices(index: SplitIndex, train_methods: Sequence[str], balance: bool) -> np.ndarray:
    """Reals plus fakes of the training methods; with `balance`, reals are repeated (whole
    copies, then a seeded remainder) until they match the fakes in number."""
    real = np.flatnonzero(index.methods == "real")
    fake = np.flatnonzero(np.isin(index.methods, list(train_methods)))
    if real.size == 0 or fake.size == 0:
        raise ValueError("training split needs both real and fake examples")
    if balance and fake.size > real.size:
        copies, remainder = divmod(fake.size, real.size)
        extra = np.random.default_rng(0).choice(real, remainder, replace=False)
        real = np.concatenate([np.tile(real, copies), extra])
    return np.concatenate([real, fake])
