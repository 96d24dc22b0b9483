"""GCL's graded labels: the overlap of two views' 2D fields of view, from their positions and headings
([docs/gcl.md](../../../docs/gcl.md#graded-labels)), and the label kind ``graded`` (``LABELS``).

A view at c with heading h (radians, clockwise from north, as a compass) sees the sector
S(c, h) = {p : |p - c| <= r, angle(p - c, u_h) <= theta / 2}, u_h = (sin h, cos h) in (east, north).
psi = |S_a ∩ S_b| / |S| with |S| = theta r^2 / 2, computed by quadrature on a polar grid of S_a.
GCL's MSLS constants are unpublished (its issue #20); r = 50 m, theta = 90 deg are the defaults.
dbStruct datasets have positions only: :func:`distance_similarity` is the expected overlap of two
co-directional views whose displacement direction is uniformly random -- a function of the distance.
"""

from __future__ import annotations

import functools

import numpy as np

from ...datasets.labels import register_labels

RADIUS, FOV = 50.0, np.pi / 2
_RHO, _PHI = 200, 180  # quadrature grid of a sector: about 2e-3 accuracy


@functools.lru_cache(maxsize=8)
def _grid(r: float, theta: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points of the sector S(0, 0) (east, north) at cell centres, with their area weights."""
    rho = (np.arange(_RHO) + 0.5) * r / _RHO
    phi = -theta / 2 + (np.arange(_PHI) + 0.5) * theta / _PHI
    rr, pp = np.meshgrid(rho, phi, indexing="ij")
    w = rr * (r / _RHO) * (theta / _PHI)
    return rr * np.sin(pp), rr * np.cos(pp), w / w.sum()


def fov_overlaps(ca, ha: float, cbs, hbs, r: float = RADIUS, theta: float = FOV) -> np.ndarray:
    """psi = |S(ca, ha) ∩ S(cb, hb)| / |S| of one view at UTM position ca (east, north, metres) with
    compass heading ha (radians) against views at ``cbs`` (N x 2) with headings ``hbs`` (N)."""
    cbs = np.asarray(cbs, np.float64).reshape(-1, 2) - np.asarray(ca, np.float64).reshape(1, 2)
    hbs = np.broadcast_to(np.asarray(hbs, np.float64), (len(cbs),))
    out = np.zeros(len(cbs))
    near = np.flatnonzero(np.hypot(cbs[:, 0], cbs[:, 1]) <= 2 * r)
    if len(near) == 0:
        return out
    e, n, w = _grid(r, theta)
    c, s = np.cos(ha), np.sin(ha)  # rotate the grid of S(0, 0) to heading ha
    pe, pn = (e * c + n * s).ravel(), (-e * s + n * c).ravel()
    for i in near:  # one partner at a time keeps memory at one grid
        qe, qn = pe - cbs[i, 0], pn - cbs[i, 1]  # the points relative to cb
        angle = np.abs((np.arctan2(qe, qn) - hbs[i] + np.pi) % (2 * np.pi) - np.pi)
        out[i] = w.ravel()[(qe * qe + qn * qn <= r * r) & (angle <= theta / 2)].sum()
    return out


def fov_overlap(ca, ha: float, cb, hb: float, r: float = RADIUS, theta: float = FOV) -> float:
    """:func:`fov_overlaps` of one pair of views."""
    return float(fov_overlaps(ca, ha, [cb], [hb], r, theta)[0])


STEP = 1.0  # metres between the tabulated distances


@functools.lru_cache(maxsize=8)
def _distance_table(r: float, theta: float, directions: int = 18) -> np.ndarray:
    """psi_d at 0, 1, 2, ... m. |S ∩ (S + v)| = |S ∩ (S - v)| and the sector is symmetric about its
    axis, so displacement directions in one quadrant cover all four."""
    d = np.arange(0.0, 2 * r + STEP, STEP)
    phis = (np.arange(directions) + 0.5) * (np.pi / 2) / directions
    return np.array([np.mean([fov_overlap((0, 0), 0.0, (x * np.sin(f), x * np.cos(f)), 0.0, r, theta)
                              for f in phis]) for x in d])  # fmt: skip


def distance_similarity(d, r: float = RADIUS, theta: float = FOV) -> np.ndarray:
    """psi_d(d): the mean overlap of two co-directional views d metres apart, over the direction of
    the displacement -- the graded similarity of views known by position only. 1 at d = 0, 0 beyond
    2 r sin(theta / 2). Lost: the headings (views of one place facing away from each other get the
    same psi), the forward/lateral asymmetry, occlusion."""
    table = _distance_table(float(r), float(theta))
    return np.interp(np.asarray(d, np.float64), np.arange(len(table)) * STEP, table, right=0.0)


def graded(db, iq: int, ids) -> np.ndarray:
    """The label kind ``graded`` of a dataset with positions only: :func:`distance_similarity` of the
    query's and the images' UTM positions (GCL labels by field-of-view overlap, ``src/datasets.py``)."""
    d = np.linalg.norm(db.utm_db[:, np.asarray(ids, np.int64)] - db.utm_q[:, iq : iq + 1], axis=0)
    return distance_similarity(d).astype(np.float32)


register_labels("graded", graded)
