"""Resample a sheared (gantry tilt) or unevenly spaced stack onto an orthogonal, uniform grid."""

from __future__ import annotations

import numpy as np

from .geometry import _Geometry


def _resample(stack: np.ndarray, g: _Geometry) -> np.ndarray:
    """Put a sheared and/or unevenly spaced stack on the orthogonal, uniform grid of ``g``.

    Target slice m lies at ``target_distances[m]`` along the normal; its pixel (i, j) is at
    in-plane offset (u_min + i * di, v_min + j * dj) from the first slice's origin. Each source
    slice is sampled there (bilinear, its own in-plane offset), and the two source slices around
    the target plane are blended linearly along the normal.
    """
    from scipy.ndimage import affine_transform

    spacing_i, spacing_j, _ = g.spacing
    rows, columns = g.target_shape
    u_min, v_min = g.inplane_min
    fill = float(stack.min())
    out = np.empty((len(g.target_distances), rows, columns), dtype=stack.dtype)
    distances = g.distances
    cache: dict[int, np.ndarray] = {}

    def sample(k: int) -> np.ndarray:
        if k not in cache:
            if len(cache) > 2:
                cache.pop(min(cache))
            offset = ((v_min - g.inplane[k, 1]) / spacing_j, (u_min - g.inplane[k, 0]) / spacing_i)
            cache[k] = affine_transform(
                stack[k].astype(np.float32),
                np.ones(2),
                offset=offset,
                output_shape=(rows, columns),
                order=1,
                mode="constant",
                cval=fill,
            )
        return cache[k]

    last = len(distances) - 1
    for m, t in enumerate(g.target_distances):
        a = int(np.clip(np.searchsorted(distances, t, side="right") - 1, 0, max(last - 1, 0)))
        b = min(a + 1, last)
        span = distances[b] - distances[a]
        w = float(np.clip((t - distances[a]) / span, 0.0, 1.0)) if span > 0 else 0.0
        if w < 1e-6:
            plane = sample(a)
        elif w > 1 - 1e-6:
            plane = sample(b)
        else:
            plane = (1.0 - w) * sample(a) + w * sample(b)
        out[m] = np.rint(plane) if out.dtype.kind == "i" else plane
    return out
