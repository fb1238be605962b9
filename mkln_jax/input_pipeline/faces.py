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
    height, width = image.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    if scale < 1.0:
        grey = cv2.resize(grey, (round(width * scale), round(height * scale)), cv2.INTER_AREA)
    grey = cv2.equalizeHist(grey)
    min_side = max(24, round(min(grey.shape) * 0.12))
    found = _haar().detectMultiScale(grey, scaleFactor=1.1, minNeighbors=6, minSize=(min_side,) * 2)
    if len(found) == 0:
        return None
    boxes = [Box(x / scale, y / scale, w / scale, h / scale) for x, y, w, h in found]
    return max(boxes, key=lambda b: b.area)


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
