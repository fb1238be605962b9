"""Shared by the benchmark scripts: loading an ml_collections config file by path, a config's
student step, and a prepared face dataset written from given crops."""

from __future__ import annotations

import dataclasses
import importlib.util


def load_config(path: str):
    """`get_config()` of the config file at `path` (e.g. configs/demo.py)."""
    spec = importlib.util.spec_from_file_location("bench_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def student_step(config, *, teacher: bool = True, hparam_overrides: dict | None = None):
    """The config's student train step, compiled, with random inputs of the config's shape:
    (compiled, state, teacher variables or None, batch, hparams). `teacher=False` drops the
    teacher (plain cross-entropy); `hparam_overrides` replaces traced settings."""
    import jax
    import numpy as np

    from mkln_jax import experiment, sharding
    from mkln_jax import step as step_lib

    mesh = experiment.make_mesh(config)
    tx = experiment.make_optimizer(config, "student")
    model = experiment.build_model(config, "student", with_weights=False)
    graphdef, _, _ = step_lib.split_model(model)
    state = step_lib.init_state(model, tx, config.seed)
    teachers, frozen = (), None
    if teacher:
        t_graph, t_params, t_stats = step_lib.split_model(
            experiment.build_model(config, "teacher", with_weights=False)
        )
        teachers = (experiment.model_fn(config, "teacher", t_graph),)
        frozen = (step_lib.Frozen(t_params, t_stats),)
    fn = step_lib.make_train_step(
        experiment.model_fn(config, "student", graphdef),
        tx,
        teachers=teachers,
        method=experiment.method(config, "student"),
    )
    size, batch_size = config.data.image_size, config.student.batch_size
    rng = np.random.default_rng(0)
    batch = sharding.host_to_global(
        {
            "image": rng.integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8),
            "label": np.tile(np.int32([0, 1]), batch_size // 2),
        },
        mesh,
    )
    weights = np.ones((1,), np.float32) if teacher else None
    hparams = dataclasses.replace(
        experiment.hparams(config, "student"),
        **{k: np.float32(v) for k, v in (hparam_overrides or {}).items()},
        teacher_weights=weights,
    )
    compiled = jax.jit(fn).lower(state, frozen, batch, hparams).compile()
    return compiled, state, frozen, batch, hparams


def write_face_dataset(source, settings, data_dir, videos: int, make_crops):
    """A `folder`-builder dataset of `videos` videos x settings.num_frames PNG crops from
    `make_crops()` (called only to write; half real, half one fake method; train/val/test 8:1:1
    by video), written under data_dir without reading any video: each record costs what a
    prepared FF++ record costs to decode. Returns the builder; one already written is kept."""
    import pathlib

    from mkln_jax.input_pipeline.build import catalog, preprocess
    from mkln_jax.input_pipeline.build.datasets import forgery

    pathlib.Path(source.root, "real").mkdir(parents=True, exist_ok=True)
    builder = forgery.FaceFolder(
        source=source,
        settings=settings,
        progress=False,
        data_dir=str(data_dir),
        file_format="array_record",
    )
    if builder.is_prepared():
        return builder
    frames, crops = settings.num_frames, make_crops()
    entries, results = [], {}
    splits = ["train"] * 8 + ["val", "test"]
    for v in range(videos):
        method = "real" if v % 2 == 0 else "fake_method"
        video_id = f"{method}/{v:05d}"
        entries.append(
            catalog.Entry(
                "folder",
                splits[(v // 2) % 10],  # pairs of videos: every split holds both labels
                v % 2,
                method,
                video_id,
                f"{v:05d}.mp4",
                identity=str(v),
            )
        )
        results[video_id] = preprocess.VideoResult(
            video_id,
            "ok",
            frames_sampled=frames,
            faces_per_frame=[1] * frames,
            frame_indices=list(range(frames)),
            crops=[crops[(v * 7 + i) % len(crops)] for i in range(frames)],
            landmarks=[None] * frames,
            masks=[None] * frames,
        )
    # The tree is synthetic: entries and crops come from here, not from files.
    object.__setattr__(source, "entries", lambda: entries)

    def run(entries, settings, work_dir, workers, progress):
        return results, preprocess.Report(videos_total=len(entries), videos_done=len(entries))

    original = preprocess.run
    preprocess.run = run
    try:
        builder.download_and_prepare()
    finally:
        preprocess.run = original
    return builder
