"""Preprocessing maths shared by data.py, train.py, export.py and evaluate.py.

This is the Python twin of src/preprocess/index.ts. Keep the two identical: the parity test
(tests/preprocess/parity.test.ts) compares TS output against goldens written from this module.

Decode to [0,1] (what src/decode produces as an ImageFrame):
  value = stored * RescaleSlope + RescaleIntercept
  window from the file (first WindowCenter/WindowWidth, width > 1) using the DICOM linear VOI
  function, else min-max over the frame; MONOCHROME1 inverted (1 - v).

Resize (per axis, separable): output pixel i covers the source interval
  [off + i*s, off + (i+1)*s] with s = in/out (stretch).
  - downscale (s >= 1): area average, each source pixel weighted by its overlap with the interval
    (box filter, exact fractional overlap, interval clamped to [0, in]);
  - upscale (s < 1): bilinear with half-pixel centres (align_corners=False), indices clamped to
    the edge, no antialias.
Weights are computed in float64 and applied as float32 sums.
"""
from __future__ import annotations

import math

import numpy as np


def axis_weights(in_size: int, out_size: int, src_offset: float = 0.0, src_scale: float | None = None):
    """Per output index: (list of source indices, list of weights). Mirrors axisWeights() in TS."""
    s = in_size / out_size if src_scale is None else src_scale
    idx: list[list[int]] = []
    wts: list[list[float]] = []
    for i in range(out_size):
        if s >= 1.0:
            a = src_offset + i * s
            b = a + s
            a = max(a, 0.0)
            b = min(b, float(in_size))
            j0 = int(math.floor(a))
            j1 = int(math.ceil(b))
            ii: list[int] = []
            ww: list[float] = []
            total = 0.0
            for j in range(j0, j1):
                ov = min(b, j + 1.0) - max(a, float(j))
                if ov > 0:
                    ii.append(j)
                    ww.append(ov)
                    total += ov
            if total <= 0:  # degenerate interval: nearest pixel
                j = min(max(int(math.floor(a)), 0), in_size - 1)
                ii, ww, total = [j], [1.0], 1.0
            idx.append(ii)
            wts.append([w / total for w in ww])
        else:
            c = src_offset + (i + 0.5) * s - 0.5
            j0 = int(math.floor(c))
            f = c - j0
            a = min(max(j0, 0), in_size - 1)
            b = min(max(j0 + 1, 0), in_size - 1)
            if a == b:
                idx.append([a])
                wts.append([1.0])
            else:
                idx.append([a, b])
                wts.append([1.0 - f, f])
    return idx, wts


def weight_matrix(in_size: int, out_size: int) -> np.ndarray:
    idx, wts = axis_weights(in_size, out_size)
    m = np.zeros((out_size, in_size), dtype=np.float64)
    for i, (ii, ww) in enumerate(zip(idx, wts)):
        for j, w in zip(ii, ww):
            m[i, j] += w
    return m


_WM_CACHE: dict[tuple[int, int], np.ndarray] = {}


def _wm(in_size: int, out_size: int) -> np.ndarray:
    key = (in_size, out_size)
    m = _WM_CACHE.get(key)
    if m is None:
        m = weight_matrix(in_size, out_size).astype(np.float32)
        if len(_WM_CACHE) > 512:
            _WM_CACHE.clear()
        _WM_CACHE[key] = m
    return m


def resize_stretch(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """img: HxW float32 in [0,1] -> out_h x out_w float32 (stretch, separable area/bilinear)."""
    wy = _wm(img.shape[0], out_h)
    wx = _wm(img.shape[1], out_w)
    return (wy @ img.astype(np.float32) @ wx.T).astype(np.float32)


def rgb_to_grey(img: np.ndarray) -> np.ndarray:
    """Rec. 601 luma, HxWx3 -> HxW."""
    return (0.299 * img[..., 0] + 0.587 * img[..., 1] + 0.114 * img[..., 2]).astype(np.float32)


def normalise(img: np.ndarray, mean: float, std: float) -> np.ndarray:
    return ((img - np.float32(mean)) / np.float32(std)).astype(np.float32)


def preprocess(frame: np.ndarray, size: int, mean: float, std: float) -> np.ndarray:
    """Decoded frame (HxW or HxWx3 in [0,1]) -> 1 x size x size float32 (CHW, grey)."""
    if frame.ndim == 3:
        frame = rgb_to_grey(frame)
    out = resize_stretch(frame, size, size)
    return normalise(out, mean, std)[None, :, :]


# ---------------------------------------------------------------- decode to [0, 1]

def _first(v):
    if v is None:
        return None
    try:
        return float(v[0])
    except (TypeError, IndexError):
        try:
            return float(v)
        except (TypeError, ValueError):
            return None


def window_linear(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 linear VOI function mapped to [0,1]."""
    y = ((x - (center - 0.5)) / (width - 1.0)) + 0.5
    return np.clip(y, 0.0, 1.0).astype(np.float32)


def minmax(x: np.ndarray) -> np.ndarray:
    lo = float(x.min())
    hi = float(x.max())
    if hi <= lo:
        return np.zeros_like(x, dtype=np.float32)
    return ((x - lo) / (hi - lo)).astype(np.float32)


def dicom_to_unit(ds, pixels: np.ndarray) -> np.ndarray:
    """One frame of stored pixels -> [0,1] float32 (grey HxW, or HxWx3 for colour)."""
    photometric = str(ds.get('PhotometricInterpretation', 'MONOCHROME2'))
    x = pixels.astype(np.float64)
    if pixels.ndim == 3:  # colour: pydicom already converts YBR to RGB when asked; scale by bits
        bits = int(ds.get('BitsStored', 8))
        return np.clip(x / float((1 << bits) - 1), 0, 1).astype(np.float32)
    slope = _first(ds.get('RescaleSlope')) or 1.0
    intercept = _first(ds.get('RescaleIntercept')) or 0.0
    x = x * slope + intercept
    c = _first(ds.get('WindowCenter'))
    w = _first(ds.get('WindowWidth'))
    if c is not None and w is not None and w > 1:
        y = window_linear(x, c, w)
    else:
        y = minmax(x)
    if photometric == 'MONOCHROME1':
        y = (1.0 - y).astype(np.float32)
    return y
