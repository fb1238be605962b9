"""Score images, videos or folders of them with an exported artifact: sample frames, find and
track every face, score all crops in one batch, give a verdict (the most suspect face's);
optionally write per-frame scores (CSV / JSON) and an annotated strip of frames (PNG).

Inputs are never harmed: an output path that is an input is refused before any scoring, strip
names come from each input's whole relative path (two `x.mp4` in different folders never share
one), and the report and strips are written atomically as each input is scored, so an
interruption keeps everything scored so far. Exit status of `run`: 0 when every input was
scored, 1 when some were skipped, 2 when none could be scored (or nothing was given).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import pathlib
import sys
import time

import cv2
import numpy as np

from mkln_jax import export, fileio, metrics
from mkln_jax.errors import MklnError
from mkln_jax.input_pipeline import faces, video
from mkln_jax.input_pipeline.build import preprocess

IMAGE_SUFFIXES = video.IMAGE_SUFFIXES


class PredictError(Exception):
    """Nothing could be scored; the message is one line naming the file and the reason."""


# Columns of the per-frame report (Prediction.rows).
ROW_FIELDS = ("path", "frame", "face", "p_fake", "face_p_fake", "video_p_fake", "verdict")

# Box colours of tracks in strips (RGB): blue, orange, purple, cyan, yellow, then again.
TRACK_COLOURS = ((40, 110, 230), (240, 150, 20), (150, 60, 200), (20, 190, 200), (220, 200, 30))


@dataclasses.dataclass
class Track:
    """One face followed across the sampled frames, and its scores."""

    frame_indices: list[int]
    scores: list[float]  # P(fake) per frame where this face was found
    boxes: list[faces.Box]  # one per scored frame, in the frame's pixels


@dataclasses.dataclass
class Prediction:
    path: str
    tracks: list[Track]  # every face, longest track first (faces.tracks)
    sampled: list[int]  # every sampled frame index
    threshold: float
    seconds: float  # end to end: decoding, detection, scoring
    model_seconds: float = 0.0  # the artifact's share
    frames: list[np.ndarray] = dataclasses.field(default_factory=list, repr=False)
    note: str = ""  # e.g. fewer frames decoded than asked
    aggregate: str = "mean"  # metrics.AGGREGATIONS: how a track's frame scores make its score
    crops: list[np.ndarray] = dataclasses.field(default_factory=list, repr=False)
    saliency: np.ndarray | None = dataclasses.field(default=None, repr=False)  # [n, S, S]

    def track_score(self, track: Track) -> float:
        return metrics.aggregate(track.scores, self.aggregate)

    @property
    def frames_without_face(self) -> list[int]:
        seen = {i for t in self.tracks for i in t.frame_indices}
        return [i for i in self.sampled if i not in seen]

    @property
    def score(self) -> float:
        """Video score: the highest track score, each track's frames aggregated by `aggregate`
        (metrics.aggregate). One forged face makes a video fake, as in the inference of
        Self-Blended Images (Shiohara and Yamasaki, CVPR 2022) and of the DFDC winner."""
        return max(self.track_score(t) for t in self.tracks)

    @property
    def verdict(self) -> str:
        return "FAKE" if self.score >= self.threshold else "REAL"

    @property
    def crops_scored(self) -> int:
        return sum(len(t.scores) for t in self.tracks)

    def lines(self) -> list[str]:
        out = [f"{self.path}"]
        several = len(self.tracks) > 1
        for k, track in enumerate(self.tracks, 1):
            indent = "    " if several else "  "
            if several:
                out.append(
                    f"  face {k}: {self.aggregate} P(fake) {self.track_score(track):.4f} over "
                    f"{len(track.scores)} frames"
                )
            pairs = zip(track.frame_indices, track.scores, strict=True)
            out += [f"{indent}frame {i:5d}  P(fake) {s:.4f}" for i, s in pairs]
        if self.frames_without_face:
            out.append(f"  frames without a face (not scored): {self.frames_without_face}")
        if self.note:
            out.append(f"  note: {self.note}")
        rule = f"{self.aggregate} P(fake)"
        if several:
            rule = f"highest of {len(self.tracks)} faces' {rule}"
        n = self.crops_scored
        out.append(
            f"  verdict: {self.verdict} ({rule} {self.score:.4f} over {n} crops, threshold "
            f"{self.threshold:g}; {len(self.sampled) / self.seconds:.1f} frames/s end to end, "
            f"model {n / max(self.model_seconds, 1e-9):.0f} crops/s)"
        )
        return out

    def rows(self) -> list[dict]:
        """One row per sampled frame and face found in it (a frame without one gets a row with
        no face), for CSV / JSON."""
        rows = []
        for i in sorted(self.sampled):
            hits = [
                (k, t.scores[t.frame_indices.index(i)])
                for k, t in enumerate(self.tracks, 1)
                if i in t.frame_indices
            ]
            for k, p in hits or [(None, None)]:
                rows.append(
                    {
                        "path": self.path,
                        "frame": i,
                        "face": k,
                        "p_fake": p,
                        "face_p_fake": None if k is None else self.track_score(self.tracks[k - 1]),
                        "video_p_fake": self.score,
                        "verdict": self.verdict,
                    }
                )
        return rows

    def strip(self, height: int = 160) -> np.ndarray:
        """The sampled frames side by side (RGB), each face boxed in its track's colour and
        labelled with its track number and P(fake) (red over the threshold, green under), the
        verdict above."""
        tiles = []
        for frame, index in zip(self.frames, sorted(self.sampled), strict=True):
            scale = height / frame.shape[0]
            tile = cv2.resize(frame, (round(frame.shape[1] * scale), height))
            tile = np.ascontiguousarray(tile)
            drawn = False
            for k, track in enumerate(self.tracks):
                if index not in track.frame_indices:
                    continue
                at = track.frame_indices.index(index)
                box, p = track.boxes[at], track.scores[at]
                x0, y0 = round(box.x * scale), round(box.y * scale)
                x1, y1 = round((box.x + box.w) * scale), round((box.y + box.h) * scale)
                cv2.rectangle(tile, (x0, y0), (x1, y1), TRACK_COLOURS[k % len(TRACK_COLOURS)], 2)
                text_colour = (220, 40, 40) if p >= self.threshold else (40, 200, 40)
                label = f"{k + 1}:{p:.2f}" if len(self.tracks) > 1 else f"{p:.2f}"
                cv2.putText(
                    tile,
                    label,
                    (x0, max(12, y0 - 4)),
                    cv2.FONT_HERSHEY_SIMPLEX,
                    0.45,
                    text_colour,
                    1,
                    cv2.LINE_AA,
                )
                drawn = True
            if not drawn:
                cv2.putText(
                    tile,
                    "no face",
                    (4, 14),
                    cv2.FONT_HERSHEY_SIMPLEX,
                    0.45,
                    (200, 200, 200),
                    1,
                    cv2.LINE_AA,
                )
            tiles.append(tile)
        body = np.concatenate(tiles, axis=1)
        if self.saliency is not None:
            body = np.concatenate([body, self._saliency_row(body.shape[1], height)], axis=0)
        header = np.full((26, body.shape[1], 3), 255, np.uint8)
        colour = (200, 30, 30) if self.verdict == "FAKE" else (30, 150, 30)
        faces_note = f", {len(self.tracks)} faces" if len(self.tracks) > 1 else ""
        text = (
            f"{pathlib.Path(self.path).name}: {self.verdict} "
            f"({self.aggregate} P(fake) {self.score:.3f}{faces_note})"
        )
        cv2.putText(header, text, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.55, colour, 1, cv2.LINE_AA)
        return np.concatenate([header, body], axis=0)

    def _saliency_row(self, width: int, height: int) -> np.ndarray:
        """Each scored face crop with its saliency map laid over it (red = where the P(fake)
        margin is most sensitive), left-aligned under the frames, framed in its face's colour
        when there are several."""
        owners = [k for k, t in enumerate(self.tracks) for _ in t.scores]
        tiles = []
        for crop, heat, k in zip(self.crops, self.saliency, owners, strict=True):
            crop = cv2.resize(crop, (height, height))
            heat = cv2.resize((np.clip(heat, 0, 1) * 255).astype(np.uint8), (height, height))
            colour = cv2.cvtColor(cv2.applyColorMap(heat, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
            tile = cv2.addWeighted(crop, 0.55, colour, 0.45, 0.0)
            if len(self.tracks) > 1:
                edge = TRACK_COLOURS[k % len(TRACK_COLOURS)]
                cv2.rectangle(tile, (1, 1), (height - 2, height - 2), edge, 3)
            tiles.append(tile)
        row = np.concatenate(tiles, axis=1)[:, :width]
        return np.pad(row, ((0, 0), (0, width - row.shape[1]), (0, 0)), constant_values=255)


def expand(paths: list[str]) -> tuple[list[pathlib.Path], list[pathlib.Path]]:
    """(inputs, not taken): files as given; folders replaced by the videos and images under them
    (sorted); files under a folder of no known media kind, or not regular files, are not taken.
    An input named twice is scored once."""
    out, not_taken, seen = [], [], set()
    for item in map(pathlib.Path, paths):
        if item.is_dir():
            for p in sorted(item.rglob("*")):
                if p.is_dir():
                    continue
                if p.is_file() and p.suffix.lower() in video.MEDIA_SUFFIXES:
                    found = p
                else:
                    not_taken.append(p)
                    continue
                if fileio.resolved(found) not in seen:
                    seen.add(fileio.resolved(found))
                    out.append(found)
        elif fileio.resolved(item) not in seen:
            seen.add(fileio.resolved(item))
            out.append(item)
    return out, not_taken


def _load_frames(path: pathlib.Path, num_frames: int) -> tuple[list[np.ndarray], list[int], str]:
    """(RGB frames, their indices, a note when fewer frames came out than asked)."""
    try:
        fileio.require_regular_file(path, "file")
    except fileio.UnsafeInputError as err:
        raise PredictError(str(err)) from None
    if path.suffix.lower() in IMAGE_SUFFIXES:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise PredictError(f"{path}: not a readable image")
        return [cv2.cvtColor(image, cv2.COLOR_BGR2RGB)], [0], ""
    try:
        clip = video.read_sampled(path, num_frames)
    except video.VideoError as err:
        raise PredictError(str(err)) from err
    wanted = video.evenly_spaced(clip.total_frames, num_frames)
    note = ""
    if len(clip.frames) < len(wanted):
        note = (
            f"decoded {len(clip.frames)} of the {len(wanted)} frames sampled (the file is "
            "truncated or damaged); scored on those"
        )
    elif len(wanted) < num_frames:
        note = f"the video has {clip.total_frames} frame(s), fewer than the {num_frames} asked"
    return clip.frames, clip.indices, note


_PIPELINES: dict = {}  # one detector per pipeline (dlib's predictor loads in seconds)


def recorded_pipeline(artifact: export.Artifact) -> dict:
    """The face pipeline of the artifact's training data; artifacts from before it was
    recorded used Haar boxes with square crops."""
    return artifact.metadata.get("face_pipeline") or {
        "detector": "haar",
        "shape_predictor": "",
        "align": False,
        "margin": artifact.metadata["face_crop"]["margin"],
    }


def face_pipeline(artifact: export.Artifact, detector: str = ""):
    """(detector, preprocess.Settings) rebuilding the artifact's face pipeline, or PredictError
    naming what is missing (recorded_pipeline). `detector` replaces the recorded detector
    (the rest of the pipeline stays; dlib then brings its 68-point landmarks)."""
    recorded = recorded_pipeline(artifact)
    if detector and detector != recorded["detector"]:
        if detector not in faces.DETECTORS:
            raise PredictError(f"unknown detector {detector!r}; known: {sorted(faces.DETECTORS)}")
        shape_predictor = "dlib68" if detector == "dlib" else ""
        recorded = {**recorded, "detector": detector, "shape_predictor": shape_predictor}
    name = recorded["detector"]
    if name == "deepfakebench":
        raise PredictError(
            "this artifact was trained on DeepfakeBench's own crops, whose pipeline (dlib 81 "
            "landmarks, its alignment) mkln does not reproduce: give it crops made that way"
        )
    settings = preprocess.Settings(
        num_frames=int(artifact.metadata["num_frames"]),
        crop_size=artifact.input_size,
        margin=float(recorded["margin"]),
        detector=name,
        shape_predictor=recorded.get("shape_predictor", ""),
        align=bool(recorded.get("align", False)),
    )
    key = (name, settings.shape_predictor)
    if key not in _PIPELINES:
        try:
            if name == "dlib":  # before fetching its landmark model
                import dlib  # noqa: F401
            settings_resolved = preprocess.resolve(settings)
            _PIPELINES[key] = faces.make_detector(
                name, **preprocess.detector_args(settings_resolved)
            )
        except ImportError as err:
            raise PredictError(
                f"the artifact's face pipeline uses the {name} detector, which needs the "
                f"`faces` extra: pip install 'mkln_jax[faces]' ({err})"
            ) from None
        except (OSError, RuntimeError, ValueError) as err:
            raise PredictError(f"the artifact's {name} face pipeline cannot start: {err}") from None
    return _PIPELINES[key], settings


def face_crops(frames, indices, detector, settings):
    """Every face tracked across the frames (faces.tracks), each track a (crops, frame
    indices, boxes) triple, cropped as `prepare` crops (preprocess.crop_face)."""
    found = faces.tracks([detector.detect(frame) for frame in frames])
    out = []
    for track in found:
        crops, kept, boxes = [], [], []
        for frame, index, face in zip(frames, indices, track, strict=True):
            if face is not None:
                crops.append(preprocess.crop_face(frame, face, settings)[0])
                kept.append(index)
                boxes.append(face.box)
        out.append((crops, kept, boxes))
    return out


def predict(
    artifact: export.Artifact,
    path: str | pathlib.Path,
    num_frames: int,
    aggregate: str = "mean",
    explain: bool = False,
    detector: str = "",
) -> Prediction:
    """Scores one image or video: every face found and tracked across the sampled frames,
    cropped by the artifact's own face pipeline (that of its training data), all crops in one
    batched call; the verdict is the highest track's."""
    start = time.perf_counter()
    path = pathlib.Path(path)
    frames, indices, note = _load_frames(path, num_frames)
    found = face_crops(frames, indices, *face_pipeline(artifact, detector))
    if not found:
        raise PredictError(f"{path}: no face found in {len(frames)} sampled frame(s)")
    crops = [c for track_crops, _, _ in found for c in track_crops]
    model_start = time.perf_counter()
    scores = [float(s) for s in artifact(np.stack(crops))]
    model_seconds = time.perf_counter() - model_start
    saliency = artifact.explain(np.stack(crops)) if explain else None
    tracks, at = [], 0
    for track_crops, kept, boxes in found:
        tracks.append(Track(kept, scores[at : at + len(track_crops)], boxes))
        at += len(track_crops)
    seconds = time.perf_counter() - start
    return Prediction(
        str(path),
        tracks,
        list(indices),
        artifact.threshold,
        seconds,
        model_seconds,
        frames,
        note,
        aggregate,
        crops,
        saliency,
    )


def write_rows(predictions: list[Prediction], path: str | pathlib.Path) -> pathlib.Path:
    """Per-frame scores of every prediction as CSV (.csv) or JSON (anything else), written
    atomically (a temporary file renamed over `path`)."""
    path = pathlib.Path(path)
    rows = [row for p in predictions for row in p.rows()]
    if path.suffix.lower() == ".csv":
        buffer = io.StringIO(newline="")
        writer = csv.DictWriter(buffer, fieldnames=ROW_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
        fileio.atomic_write(path, buffer.getvalue())
    else:
        videos = [
            {
                "path": p.path,
                "p_fake": p.score,
                "verdict": p.verdict,
                "threshold": p.threshold,
                "rule": f"highest over faces of the {p.aggregate} of per-frame P(fake)",
                "faces": [
                    {"face": k, "frames": len(t.scores), "p_fake": p.track_score(t)}
                    for k, t in enumerate(p.tracks, 1)
                ],
                "frames": p.rows(),
            }
            for p in predictions
        ]
        fileio.atomic_write(path, json.dumps(videos, indent=2))
    return path


def strip_names(inputs: list[pathlib.Path]) -> dict[pathlib.Path, str]:
    """A strip file name per input, from its path relative to the inputs' common folder with
    "/" as "__" (a/x.mp4 and b/x.png get a__x.mp4.strip.png and b__x.png.strip.png)."""
    resolved = [fileio.resolved(p) for p in inputs]
    parents = [str(p.parent) for p in resolved]
    common = pathlib.Path(os.path.commonpath(parents)) if parents else pathlib.Path("/")
    names, used = {}, set()
    for item, full in zip(inputs, resolved, strict=True):
        base = "__".join(full.relative_to(common).parts)
        name, k = f"{base}.strip.png", 1
        while name in used:
            k += 1
            name = f"{base}.{k}.strip.png"
        used.add(name)
        names[item] = name
    return names


def run(
    paths: list[str],
    artifact_dir: str,
    num_frames: int = 0,
    report: str = "",
    strip: str = "",
    out=sys.stdout,
    err=sys.stderr,
    aggregate: str = "",
    explain: bool = False,
    detector: str = "",
) -> int:
    """`mkln predict`: scores every input, printing results as they come. Returns the exit
    status: 0 all scored, 1 some skipped, 2 none scored (or no input, or unusable outputs)."""

    def error(message: str) -> int:
        print(f"error: {message}", file=err)
        return 2

    if not paths:
        return error("no input given. Usage: mkln predict PATH [PATH ...] --artifact=DIR")
    if explain and not strip:
        return error("--explain draws saliency maps into the strips: add --strip=DIR")
    inputs, not_taken = expand(paths)
    for path in not_taken:
        print(f"not taken: {path} (not a video or image of a known kind)", file=err)
    if not inputs:
        kinds = " ".join(video.MEDIA_SUFFIXES)
        return error(f"no videos or images found in {', '.join(paths)} (known kinds: {kinds})")
    # Outputs are checked before any work: never an input, always writable.
    strip_dir, names = None, {}
    try:
        if report:
            fileio.check_writable_output(report, inputs, "--report")
        if strip:
            strip_dir = pathlib.Path(strip)
            if strip_dir.exists() and not strip_dir.is_dir():
                return error(f"--strip {strip_dir} is a file; give a folder")
            names = strip_names(inputs)
            for name in names.values():
                fileio.check_writable_output(strip_dir / name, inputs, "--strip file")
        artifact = export.Artifact(artifact_dir)
    except MklnError as problem:
        return error(str(problem))
    try:
        face_pipeline(artifact, detector)  # refused here, once, if it cannot be rebuilt
    except PredictError as problem:
        return error(f"{artifact_dir}: {problem}")
    trained_on = recorded_pipeline(artifact)["detector"]
    if detector and detector != trained_on:
        print(
            f"note: faces found by {detector}, while the model was trained on {trained_on} "
            "crops: its scores may shift",
            file=err,
        )
    if explain and not artifact.has_saliency:
        return error(f"{artifact_dir}: this artifact has no saliency program; re-export it")
    num_frames = num_frames or int(artifact.metadata["num_frames"])
    aggregate = aggregate or artifact.metadata.get("aggregate", "mean")
    if aggregate not in metrics.AGGREGATIONS:
        return error(f"--aggregate must be one of {', '.join(metrics.AGGREGATIONS)}")
    results, skipped = [], 0
    for path in inputs:
        try:
            result = predict(artifact, path, num_frames, aggregate, explain, detector)
        except PredictError as problem:
            print(f"skipped: {problem}", file=err)
            skipped += 1
            continue
        except Exception as problem:  # anything unexpected in one file must not stop the rest
            print(f"skipped: {path}: {type(problem).__name__}: {problem}", file=err)
            skipped += 1
            continue
        results.append(result)
        print("\n".join(result.lines()), file=out, flush=True)
        if strip_dir is not None:
            _, png = cv2.imencode(".png", cv2.cvtColor(result.strip(), cv2.COLOR_RGB2BGR))
            target = fileio.atomic_write(strip_dir / names[path], png.tobytes())
            print(f"  strip: {target}", file=out)
        if report:
            write_rows(results, report)
    if report and results:
        print(f"per-frame scores: {report}", file=out)
    if skipped:
        print(f"{len(results)} of {len(inputs)} input(s) scored, {skipped} skipped", file=err)
    return 0 if not skipped else (1 if results else 2)
