"""Render a synthetic Co3D-layout dataset: textured procedural rooms seen from orbiting cameras, with exact depth.

World frame: z up, metres. Cameras use the OpenCV convention (camera-from-world [R|t], x right, y down, z forward)
and pixel intrinsics with pixel centres at integer coordinates, as Co3D's annotations do. Depth is the z-depth in
the camera frame. Rays are cast with direction K^-1 [u, v, 1] rotated to the world, whose camera z-component is 1,
so the ray parameter of a hit *is* its z-depth.

Written layout (identical to raw Co3D):
  <out>/co3d/<category>/<sequence>/images/frame000001.jpg
  <out>/co3d/<category>/<sequence>/depths/frame000001.jpg.geometric.png   (uint16 = float16 bits)
  <out>/co3d/<category>/<sequence>/depth_masks/frame000001.png            (255 valid, 0 invalid)
  <out>/annotations/<category>_<split>.jgz
"""

from __future__ import annotations

import gzip
import io
import json
import os
import zlib
from dataclasses import dataclass, field

import numpy as np
from PIL import Image


_EPS = 1e-6
_LIGHT = np.array([0.4, -0.3, 0.85]) / np.linalg.norm([0.4, -0.3, 0.85])


# ----------------------------------------------------------------------------------------------- textures
@dataclass
class Texture:
    """A procedural albedo: two colours mixed by a checker/stripe pattern, modulated by multi-octave value noise."""

    kind: str  # "checker" | "stripes" | "noise"
    c1: np.ndarray
    c2: np.ndarray
    freq: float
    noise: np.ndarray = field(repr=False)  # [64, 64] random grid

    @staticmethod
    def random(rng: np.random.Generator, freq_range=(1.5, 4.0)) -> "Texture":
        kind = str(rng.choice(["checker", "stripes", "noise"]))
        c1 = rng.uniform(0.15, 1.0, 3)
        c2 = np.clip(1.15 - c1 + rng.uniform(-0.2, 0.2, 3), 0.05, 1.0)
        return Texture(kind, c1, c2, float(rng.uniform(*freq_range)), rng.random((64, 64)))

    def _value_noise(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        n = self.noise.shape[0]
        x0, y0 = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
        fx, fy = u - x0, v - y0
        fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
        g = self.noise
        a, b = g[x0 % n, y0 % n], g[(x0 + 1) % n, y0 % n]
        c, d = g[x0 % n, (y0 + 1) % n], g[(x0 + 1) % n, (y0 + 1) % n]
        return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy

    def __call__(self, uv: np.ndarray) -> np.ndarray:
        """Albedo [N, 3] in [0, 1] at surface coordinates uv [N, 2] (metres)."""
        u, v = uv[:, 0] * self.freq, uv[:, 1] * self.freq
        if self.kind == "checker":
            t = ((np.floor(u) + np.floor(v)) % 2).astype(np.float64)
        elif self.kind == "stripes":
            t = 0.5 + 0.5 * np.sin(2 * np.pi * (u + 0.3 * v))
        else:
            t = self._value_noise(u * 1.5, v * 1.5)
        # Fine noise everywhere gives every surface trackable detail, also inside flat checker cells.
        detail = 0.5 * self._value_noise(u * 4 + 17.0, v * 4 + 5.0) + 0.5 * self._value_noise(u * 12 + 3.0, v * 12)
        albedo = self.c1[None] * (1 - t[:, None]) + self.c2[None] * t[:, None]
        return np.clip(albedo * (0.6 + 0.7 * detail[:, None]), 0, 1)


# ----------------------------------------------------------------------------------------------- primitives
# Each intersect(o [3], d [N, 3]) returns t [N] (inf on a miss), normal [N, 3] and uv [N, 2].
def _miss(n: int):
    return np.full(n, np.inf), np.zeros((n, 3)), np.zeros((n, 2))


@dataclass
class Ground:
    half: float
    tex: Texture

    def intersect(self, o, d):
        t, nrm, uv = _miss(len(d))
        with np.errstate(divide="ignore", invalid="ignore"):
            tt = -o[2] / d[:, 2]
        p = o[None] + tt[:, None] * d
        ok = (d[:, 2] < -_EPS) & (tt > _EPS) & (np.abs(p[:, 0]) <= self.half) & (np.abs(p[:, 1]) <= self.half)
        t[ok], nrm[ok] = tt[ok], [0, 0, 1]
        uv[ok] = p[ok][:, :2]
        return t, nrm, uv


@dataclass
class Wall:
    """A vertical wall on the plane x (axis 0) or y (axis 1) = pos, facing the room centre; open sky above."""

    axis: int
    pos: float
    half: float
    height: float
    tex: Texture

    def intersect(self, o, d):
        t, nrm, uv = _miss(len(d))
        a, b = self.axis, 1 - self.axis
        with np.errstate(divide="ignore", invalid="ignore"):
            tt = (self.pos - o[a]) / d[:, a]
        p = o[None] + tt[:, None] * d
        ok = (np.abs(d[:, a]) > _EPS) & (tt > _EPS) & (np.abs(p[:, b]) <= self.half) & (p[:, 2] >= 0) & (p[:, 2] <= self.height)
        n = np.zeros(3)
        n[a] = -np.sign(self.pos)
        t[ok], nrm[ok] = tt[ok], n
        uv[ok] = np.stack([p[ok][:, b], p[ok][:, 2]], 1)
        return t, nrm, uv


@dataclass
class Sphere:
    center: np.ndarray
    radius: float
    tex: Texture

    def intersect(self, o, d):
        t, nrm, uv = _miss(len(d))
        oc = o - self.center
        a = np.einsum("ij,ij->i", d, d)
        b = 2 * d @ oc
        c = oc @ oc - self.radius**2
        disc = b * b - 4 * a * c
        ok = disc >= 0
        tt = np.full(len(d), np.inf)
        tt[ok] = (-b[ok] - np.sqrt(disc[ok])) / (2 * a[ok])
        ok &= tt > _EPS
        p = o[None] + tt[ok][:, None] * d[ok]
        n = (p - self.center) / self.radius
        t[ok], nrm[ok] = tt[ok], n
        uv[ok] = np.stack([np.arctan2(n[:, 1], n[:, 0]) * self.radius, np.arccos(np.clip(n[:, 2], -1, 1)) * self.radius], 1)
        return t, nrm, uv


@dataclass
class Box:
    """A box resting on the ground, rotated by `yaw` about the vertical axis through `center`."""

    center: np.ndarray
    half: np.ndarray
    yaw: float
    tex: Texture

    def intersect(self, o, d):
        t, nrm, uv = _miss(len(d))
        c, s = np.cos(self.yaw), np.sin(self.yaw)
        rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])  # box-to-world
        ol, dl = (o - self.center) @ rot, d @ rot
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = 1.0 / dl
            t1, t2 = (-self.half - ol) * inv, (self.half - ol) * inv
        tmin, tmax = np.minimum(t1, t2), np.maximum(t1, t2)
        tmin = np.where(np.isnan(tmin), -np.inf, tmin)
        tmax = np.where(np.isnan(tmax), np.inf, tmax)
        tn, tf = tmin.max(1), tmax.min(1)
        ok = (tn <= tf) & (tn > _EPS)
        axis = tmin.argmax(1)[ok]
        p = ol[None] + tn[ok][:, None] * dl[ok]
        nl = np.zeros((ok.sum(), 3))
        nl[np.arange(len(axis)), axis] = np.sign(p[np.arange(len(axis)), axis])
        t[ok], nrm[ok] = tn[ok], nl @ rot.T
        others = np.array([[1, 2], [0, 2], [0, 1]])[axis]
        uv[ok] = np.take_along_axis(p, others, 1) + 0.37 * axis[:, None]
        return t, nrm, uv


@dataclass
class Cylinder:
    """A vertical cylinder standing on the ground at (x, y), with a flat top cap."""

    xy: np.ndarray
    radius: float
    height: float
    tex: Texture

    def intersect(self, o, d):
        t, nrm, uv = _miss(len(d))
        oc = o[:2] - self.xy
        a = d[:, 0] ** 2 + d[:, 1] ** 2
        b = 2 * (d[:, :2] @ oc)
        c = oc @ oc - self.radius**2
        disc = b * b - 4 * a * c
        side = (disc >= 0) & (a > _EPS)
        ts = np.full(len(d), np.inf)
        ts[side] = (-b[side] - np.sqrt(disc[side])) / (2 * a[side])
        z = o[2] + ts * d[:, 2]
        side &= (ts > _EPS) & (z >= 0) & (z <= self.height)
        ts[~side] = np.inf
        with np.errstate(divide="ignore", invalid="ignore"):
            tc = (self.height - o[2]) / d[:, 2]
        pc = o[None, :2] + tc[:, None] * d[:, :2]
        cap = (tc > _EPS) & (np.sum((pc - self.xy) ** 2, 1) <= self.radius**2) & (d[:, 2] < -_EPS)
        tc = np.where(cap, tc, np.inf)
        use_cap = tc < ts
        tt = np.minimum(ts, tc)
        ok = np.isfinite(tt)
        p = o[None] + tt[:, None] * d
        rel = p[:, :2] - self.xy
        n_side = np.concatenate([rel / self.radius, np.zeros((len(d), 1))], 1)
        n = np.where(use_cap[:, None], np.array([0.0, 0.0, 1.0]), n_side)
        u_side = np.stack([np.arctan2(rel[:, 1], rel[:, 0]) * self.radius, p[:, 2]], 1)
        u = np.where(use_cap[:, None], rel + 5.0, u_side)
        t[ok], nrm[ok], uv[ok] = tt[ok], n[ok], u[ok]
        return t, nrm, uv


# ----------------------------------------------------------------------------------------------- scene
def _category_rng_key(category: str) -> int:
    # zlib.crc32, not hash(): Python's str hash is salted per process and would break determinism.
    return zlib.crc32(category.encode())


def make_scene(rng: np.random.Generator, shape_bias: np.ndarray) -> list:
    """A room (ground + 4 low walls, open sky) with 3-6 textured objects near the centre."""
    half = float(rng.uniform(3.5, 5.0))
    prims: list = [Ground(half, Texture.random(rng, (1.0, 2.5)))]
    for axis in (0, 1):
        for sign in (-1.0, 1.0):
            prims.append(Wall(axis, sign * half, half, float(rng.uniform(0.6, 1.6)), Texture.random(rng, (1.0, 2.5))))
    n_obj = int(rng.integers(3, 7))
    placed: list[tuple[np.ndarray, float]] = []
    for _ in range(n_obj):
        kind = rng.choice(3, p=shape_bias)
        size = float(rng.uniform(0.2, 0.5))
        for _try in range(20):  # rejection sampling keeps objects apart, so none is hidden inside another
            xy = rng.uniform(-1.3, 1.3, 2)
            if all(np.linalg.norm(xy - q) > size + r + 0.05 for q, r in placed):
                break
        placed.append((xy, size))
        tex = Texture.random(rng, (3.0, 8.0))
        if kind == 0:
            prims.append(Sphere(np.array([xy[0], xy[1], size]), size, tex))
        elif kind == 1:
            hz = float(rng.uniform(0.15, 0.5))
            prims.append(Box(np.array([xy[0], xy[1], hz]), np.array([size * 0.8, size * 0.6, hz]), float(rng.uniform(0, np.pi)), tex))
        else:
            prims.append(Cylinder(xy.copy(), size * 0.7, float(rng.uniform(0.3, 1.0)), tex))
    return prims


def look_at(center: np.ndarray, target: np.ndarray, up=np.array([0.0, 0.0, 1.0])) -> np.ndarray:
    """OpenCV camera-from-world [3, 4] for a camera at `center` looking at `target` (image y points down)."""
    z = target - center
    z = z / np.linalg.norm(z)
    x = np.cross(z, up)
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    rot = np.stack([x, y, z])
    return np.concatenate([rot, -(rot @ center)[:, None]], 1)


def orbit_cameras(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    """n extrinsics [3, 4] on a smooth, slightly wobbling orbit around the scene centre."""
    start = rng.uniform(0, 2 * np.pi)
    sweep = rng.uniform(1.2, 1.8) * np.pi * rng.choice([-1, 1])
    radius, height = rng.uniform(2.2, 3.2), rng.uniform(0.7, 1.6)
    target = np.array([*rng.uniform(-0.2, 0.2, 2), rng.uniform(0.1, 0.4)])
    phase = rng.uniform(0, 2 * np.pi)
    out = []
    for i in range(n):
        s = i / max(n - 1, 1)
        ang = start + sweep * s
        r = radius * (1 + 0.08 * np.sin(2 * np.pi * s + phase))
        h = height * (1 + 0.15 * np.sin(4 * np.pi * s + phase))
        out.append(look_at(np.array([r * np.cos(ang), r * np.sin(ang), h]), target))
    return out


def render(prims: list, extrinsic: np.ndarray, intrinsic: np.ndarray, hw: tuple[int, int]):
    """(rgb [H, W, 3] uint8, depth [H, W] float64 z-depth, inf where the ray sees the sky)."""
    h, w = hw
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    pix = np.stack([u.ravel(), v.ravel(), np.ones(h * w)], 1)
    rays_cam = pix @ np.linalg.inv(intrinsic).T  # z component is 1 -> ray parameter == z-depth
    rot, trans = extrinsic[:, :3], extrinsic[:, 3]
    origin = -rot.T @ trans
    dirs = rays_cam @ rot  # = (R^T d_cam^T)^T
    hits = [p.intersect(origin, dirs) for p in prims]
    ts = np.stack([hit[0] for hit in hits])
    best = ts.argmin(0)
    depth = ts[best, np.arange(h * w)]
    color = np.zeros((h * w, 3))
    sky = np.array([0.55, 0.7, 0.95]) * (0.8 + 0.2 * (1 - v.ravel() / h))[:, None]
    for i, (prim, (t, nrm, uv)) in enumerate(zip(prims, hits)):
        sel = (best == i) & np.isfinite(depth)
        if sel.any():
            shade = 0.35 + 0.65 * np.clip(nrm[sel] @ _LIGHT, 0, 1)
            color[sel] = prim.tex(uv[sel]) * shade[:, None]
    color[~np.isfinite(depth)] = sky[~np.isfinite(depth)]
    rgb = np.clip(color * 255 + 0.5, 0, 255).astype(np.uint8).reshape(h, w, 3)
    return rgb, depth.reshape(h, w)


def random_holes(rng: np.random.Generator, hw: tuple[int, int], max_holes: int = 3) -> np.ndarray:
    """[H, W] bool, True inside 0..max_holes random ellipses: simulated MVS failures the mask must remove."""
    h, w = hw
    v, u = np.mgrid[0:h, 0:w]
    out = np.zeros(hw, bool)
    for _ in range(int(rng.integers(0, max_holes + 1))):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(0.03, 0.12) * h, rng.uniform(0.03, 0.12) * w
        out |= ((v - cy) / ry) ** 2 + ((u - cx) / rx) ** 2 <= 1
    return out


# ----------------------------------------------------------------------------------------------- writing
def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _write(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def write_sequence(co3d_dir: str, category: str, sequence: str, rng: np.random.Generator, frames: int,
                   hw: tuple[int, int], shape_bias: np.ndarray, far: float = 20.0) -> list[dict]:
    """Render one sequence into the raw layout; returns its annotation entries (filepath, extri, intri)."""
    h, w = hw
    prims = make_scene(rng, shape_bias)
    focal = float(rng.uniform(0.8, 1.1)) * max(h, w)
    intri = np.array([[focal, 0, (w - 1) / 2 + rng.uniform(-1, 1)], [0, focal, (h - 1) / 2 + rng.uniform(-1, 1)], [0, 0, 1]])
    entries = []
    for i, extri in enumerate(orbit_cameras(rng, frames)):
        rgb, depth = render(prims, extri, intri, hw)
        valid = np.isfinite(depth) & (depth > 0) & (depth < far)
        mask = valid & ~random_holes(rng, hw)
        d16 = np.where(valid, depth, 0).astype(np.float16)
        rel = f"{category}/{sequence}/images/frame{i + 1:06d}.jpg"
        img = io.BytesIO()
        Image.fromarray(rgb).save(img, format="JPEG", quality=95)
        _write(os.path.join(co3d_dir, rel), img.getvalue())
        _write(os.path.join(co3d_dir, rel.replace("/images", "/depths") + ".geometric.png"), _png(d16.view(np.uint16)))
        _write(os.path.join(co3d_dir, rel.replace("/images", "/depth_masks").replace(".jpg", ".png")),
               _png(mask.astype(np.uint8) * 255))
        entries.append({"filepath": rel, "extri": extri.tolist(), "intri": intri.tolist()})
    return entries


def write_annotation(path: str, annotation: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # mtime=0 keeps the gzip header free of timestamps, so identical input gives identical files.
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as f:
        f.write(json.dumps(annotation).encode())


def make_synthetic_co3d(out: str, categories=("apple", "tv"), sequences: int = 3, test_sequences: int = 1,
                        frames: int = 24, hw: tuple[int, int] = (96, 128), seed: int = 0) -> dict:
    """Write a synthetic Co3D tree under out/co3d and out/annotations; returns {'co3d_dir', 'annotation_dir', 'frames'}."""
    co3d_dir, ann_dir = os.path.join(out, "co3d"), os.path.join(out, "annotations")
    total = 0
    for category in categories:
        key = _category_rng_key(category)
        # Each category prefers some shapes, so categories look different, like Co3D's.
        shape_bias = np.random.default_rng([seed, key]).dirichlet([2.0, 2.0, 2.0])
        for split, count, offset in (("train", sequences, 0), ("test", test_sequences, sequences)):
            annotation = {}
            for s in range(offset, offset + count):
                rng = np.random.default_rng([seed, key, s])
                name = f"{100 + s}_{int(rng.integers(1000, 99999))}_{int(rng.integers(1000, 99999))}"
                annotation[name] = write_sequence(co3d_dir, category, name, rng, frames, hw, shape_bias)
                total += frames
            if count:
                write_annotation(os.path.join(ann_dir, f"{category}_{split}.jgz"), annotation)
    return {"co3d_dir": co3d_dir, "annotation_dir": ann_dir, "frames": total}
