"""The procedural `shapes` data set: ten silhouettes on cluttered, textured backgrounds.

Every image holds exactly one object whose class is its outline. Position, size,
rotation and hue are drawn independently of the class, and the shapes' areas are
kept within a factor of 1.5 of each other, so only shape tells the classes apart.
The object is always lighter than its background (a fixed contrast polarity), which
keeps the task learnable for a small CNN in a few epochs; the background is
low-frequency colour noise plus distractor strokes and smudges that are none of the
classes, and together with the random pose this keeps a linear classifier on raw
pixels far below a CNN (about 25% against 95%; see the tests).

Rendering is vectorised with numpy: each shape is a signed-distance function
evaluated on the pixel grid of a whole batch at once, and its distance in pixels
gives a one-pixel anti-aliased edge. The object is drawn last, so its mask
(pixel centre inside the outline) is never occluded.
"""

from __future__ import annotations

import numpy as np

CLASSES = (
    "circle",
    "square",
    "triangle",
    "star",
    "cross",
    "ring",
    "ellipse",
    "heart",
    "arrow",
    "crescent",
)

# Object radius as a fraction of the image side: at 32 px that is 8 to 12.2 px, big enough
# that a star's points, a ring's hole and a heart's notch survive the pixel grid.
_RADIUS = (0.25, 0.38)
# Amplitudes of the background's colour octaves (4x4, 8x8 cells) and its lightness octave (6x6).
NOISE = (0.12, 0.05, 0.07)
# How many distractor strokes and smudges may appear (each is present with probability 0.8 / 0.7).
DISTRACTORS = (3, 3)
_CHUNK = 1024


def _polygon(angles_deg, radii) -> np.ndarray:
    a = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    r = np.broadcast_to(np.asarray(radii, dtype=np.float64), a.shape)
    return np.stack([r * np.cos(a), r * np.sin(a)], axis=1).astype(np.float32)


_TRIANGLE = _polygon([90, 210, 330], 1.0)
_STAR = _polygon(90 + np.arange(10) * 36.0, [1.0, 0.42] * 5)


def _heart_polygon(n: int = 32) -> np.ndarray:
    """The classic parametric heart, x = 16 sin^3 t, y = 13 cos t - 5 cos 2t - 2 cos 3t - cos 4t, fitted to the unit disc."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
    pts = np.stack([x, y - (y.max() + y.min()) / 2], axis=1)
    pts /= np.linalg.norm(pts, axis=1).max()
    return pts[::-1].copy().astype(np.float32)


_HEART = _heart_polygon()
_ARROW = np.array(
    [[-0.9, -0.3], [0.05, -0.3], [0.05, -0.72], [0.95, 0.0], [0.05, 0.72], [0.05, 0.3], [-0.9, 0.3]],
    dtype=np.float32,
)


def _sd_polygon(x: np.ndarray, y: np.ndarray, verts: np.ndarray) -> np.ndarray:
    """Signed distance to a simple polygon (negative inside), after Inigo Quilez's sdPolygon."""
    d = (x - verts[0, 0]) ** 2 + (y - verts[0, 1]) ** 2
    inside = np.zeros(x.shape, dtype=bool)
    n = len(verts)
    for i in range(n):
        (vix, viy), (vjx, vjy) = verts[i], verts[(i + 1) % n]
        ex, ey = vjx - vix, vjy - viy
        wx, wy = x - vix, y - viy
        t = np.clip((wx * ex + wy * ey) / (ex * ex + ey * ey), 0.0, 1.0)
        bx, by = wx - ex * t, wy - ey * t
        np.minimum(d, bx * bx + by * by, out=d)
        # Crossing-number parity: the edge crosses the horizontal ray through the point.
        if viy != vjy:
            crosses = (y >= min(viy, vjy)) & (y < max(viy, vjy))
            xc = vix + (y - viy) * (ex / ey)
            inside ^= crosses & (x < xc)
    dist = np.sqrt(d)
    return np.where(inside, -dist, dist)


def _sd_box(x, y, hx, hy):
    qx, qy = np.abs(x) - hx, np.abs(y) - hy
    outside = np.sqrt(np.maximum(qx, 0) ** 2 + np.maximum(qy, 0) ** 2)
    return outside + np.minimum(np.maximum(qx, qy), 0)


def _sd_circle(x, y, r, cx=0.0, cy=0.0):
    return np.sqrt((x - cx) ** 2 + (y - cy) ** 2) - r


def _sdf(k: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Signed distance of class k in local units; every shape fits in the unit disc."""
    name = CLASSES[k]
    if name == "circle":
        return _sd_circle(x, y, 0.75)
    if name == "square":
        return _sd_box(x, y, 0.62, 0.62)
    if name == "triangle":
        return _sd_polygon(x, y, _TRIANGLE)
    if name == "star":
        return _sd_polygon(x, y, _STAR)
    if name == "cross":
        return np.minimum(_sd_box(x, y, 0.92, 0.26), _sd_box(x, y, 0.26, 0.92))
    if name == "ring":
        return np.abs(_sd_circle(x, y, 0.66)) - 0.2
    if name == "heart":
        return _sd_polygon(x, y, _HEART)
    if name == "ellipse":
        # Not an exact distance, but exact on the outline and close within a pixel of it.
        a, b = 0.95, 0.5
        k = np.sqrt((x / a) ** 2 + (y / b) ** 2)
        return (k - 1) * (k / np.maximum(np.sqrt((x / a**2) ** 2 + (y / b**2) ** 2), 1e-6))
    if name == "arrow":
        return _sd_polygon(x, y, _ARROW)
    if name == "crescent":
        return np.maximum(_sd_circle(x, y, 0.95), -_sd_circle(x, y, 0.72, 0.45, 0.0))
    raise ValueError(k)


def _interp_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Bilinear upsampling n_in -> n_out (align_corners=False) as an (n_out, n_in) matrix."""
    pos = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    pos = np.clip(pos, 0, n_in - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    w = (pos - lo).astype(np.float32)
    m = np.zeros((n_out, n_in), dtype=np.float32)
    m[np.arange(n_out), lo] += 1 - w
    m[np.arange(n_out), hi] += w
    return m


def _smooth_noise(rng, b: int, channels: int, cells: int, size: int, amp: float) -> np.ndarray:
    m = _interp_matrix(cells, size)
    g = rng.standard_normal((b, channels, cells, cells), dtype=np.float32) * np.float32(amp)
    return m @ (g @ m.T)


def _paired_colours(rng, b: int):
    """Background and object colours of random hue, the object always the lighter of the two.

    The background is a random colour darkened (times 0.08..0.38), the object a random
    colour lightened (towards white by the same rule), so the lightness gap is at least
    0.24 before noise. The hues are independent of the class and of each other.
    """
    f32 = np.float32
    dark = rng.random((b, 3), dtype=f32) * rng.uniform(0.08, 0.38, (b, 1)).astype(f32)
    light = 1 - (1 - rng.random((b, 3), dtype=f32)) * rng.uniform(0.08, 0.38, (b, 1)).astype(f32)
    return dark, light


def _render_chunk(rng, labels: np.ndarray, size: int):
    b, s = len(labels), size
    f32 = np.float32
    coords = np.arange(s, dtype=f32) + f32(0.5)
    gx, gy = coords[None, None, :], coords[None, :, None]
    base, obj_colour = _paired_colours(rng, b)

    # Background: the base colour under two octaves of colour noise and one of lightness noise.
    img = base[:, :, None, None] + _smooth_noise(rng, b, 3, 4, s, NOISE[0]) + _smooth_noise(rng, b, 3, 8, s, NOISE[1])
    img += _smooth_noise(rng, b, 1, 6, s, NOISE[2])

    # Distractors that are none of the classes: thin strokes and soft smudges.
    for _ in range(DISTRACTORS[0]):
        present = (rng.random(b) < 0.8).astype(f32)
        p0 = rng.random((b, 2), dtype=f32) * s
        p1 = p0 + (rng.random((b, 2), dtype=f32) - 0.5) * s * 1.2
        width = (0.4 + 0.6 * rng.random(b, dtype=f32)) * (s / 32)
        ink = rng.random((b, 3), dtype=f32)
        ex, ey = (p1 - p0)[:, 0, None, None], (p1 - p0)[:, 1, None, None]
        wx, wy = gx - p0[:, 0, None, None], gy - p0[:, 1, None, None]
        t = np.clip((wx * ex + wy * ey) / (ex * ex + ey * ey + 1e-6), 0, 1)
        d = np.sqrt((wx - ex * t) ** 2 + (wy - ey * t) ** 2) - width[:, None, None]
        alpha = (np.clip(0.5 - d, 0, 1) * (0.8 * present)[:, None, None])[:, None]
        img += alpha * (ink[:, :, None, None] - img)
    for _ in range(DISTRACTORS[1]):
        present = (rng.random(b) < 0.7).astype(f32)
        c = rng.random((b, 2), dtype=f32) * s
        sigma = (1.0 + 1.0 * rng.random(b, dtype=f32)) * (s / 32)
        ink = rng.random((b, 3), dtype=f32)
        r2 = (gx - c[:, 0, None, None]) ** 2 + (gy - c[:, 1, None, None]) ** 2
        alpha = (0.6 * present)[:, None, None] * np.exp(-r2 / (2 * sigma[:, None, None] ** 2))
        img += alpha[:, None] * (ink[:, :, None, None] - img)

    # The object: random radius, rotation and position (fully inside the frame).
    radius = (_RADIUS[0] + (_RADIUS[1] - _RADIUS[0]) * rng.random(b, dtype=f32)) * s
    theta = rng.random(b, dtype=f32) * f32(2 * np.pi)
    # A pixel of margin keeps every outline off the border pixels, so the mask is the whole object.
    lo, span = radius + 1.0, s - 2 * radius - 2.0
    cx = lo + rng.random(b, dtype=f32) * span
    cy = lo + rng.random(b, dtype=f32) * span
    cos, sin = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
    dx, dy = gx - cx[:, None, None], gy - cy[:, None, None]
    inv_r = (1.0 / radius)[:, None, None]
    # Image rows grow downwards; flip y so that shapes are defined the usual way up.
    lx = (dx * cos + dy * sin) * inv_r
    ly = (dx * sin - dy * cos) * inv_r
    dist = np.empty((b, s, s), dtype=f32)
    for k in np.unique(labels):
        sel = labels == k
        dist[sel] = _sdf(int(k), lx[sel], ly[sel])
    dist *= radius[:, None, None]  # local units -> pixels
    mask = dist < 0
    alpha = np.clip(0.5 - dist, 0, 1)[:, None]
    # A gentle linear shading across the object, so its fill is not one flat colour.
    gdir = rng.standard_normal((b, 2), dtype=f32)
    gdir /= np.linalg.norm(gdir, axis=1, keepdims=True) + 1e-6
    shade = 1 + 0.15 * (dx * gdir[:, 0, None, None] + dy * gdir[:, 1, None, None]) * inv_r
    fill = obj_colour[:, :, None, None] * shade[:, None]
    img += alpha * (fill - img)

    img += rng.standard_normal(img.shape, dtype=f32) * f32(0.03)
    out = np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)
    return out, mask


def generate_shapes(n: int, seed: int, stream: int = 0, size: int = 32):
    """Render `n` images; returns (uint8 images (n,3,size,size), int64 labels (n,), bool masks (n,size,size)).

    Labels are exactly balanced (n // 10 per class, the remainder spread over the first
    classes) and shuffled; the same (seed, stream, size) always gives the same arrays.
    """
    rng = np.random.default_rng([int(seed), int(stream), 0x5EA9E5])
    labels = rng.permutation(np.arange(n) % len(CLASSES)).astype(np.int64)
    images = np.empty((n, 3, size, size), dtype=np.uint8)
    masks = np.empty((n, size, size), dtype=bool)
    for start in range(0, n, _CHUNK):
        sl = slice(start, min(n, start + _CHUNK))
        images[sl], masks[sl] = _render_chunk(rng, labels[sl], size)
    return images, labels, masks
