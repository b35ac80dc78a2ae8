"""A synthetic contrast-enhanced abdominal CT with known ground truth (pure numpy/scipy, no MRML).

The anatomy is defined analytically in millimetres (LPS: x toward the patient's Left, y toward
Posterior, z toward Superior) and voxelised on any grid, so a coarse test grid shows the same
anatomy as the full 512x512x300 one. Highlights for planning tests:

- both kidneys with cortex, medullary pyramids, calyces and renal pelvis;
- a hypo-enhancing, partly exophytic tumour in the lower pole of the LEFT kidney;
- each renal artery divides at the hilum into five segmental arteries (one label each);
- ground-truth perfusion territories: every kidney voxel (cortex, medulla, collecting system and,
  on the left, the tumour) belongs to the segmental artery whose intrarenal centreline is
  nearest, which is what a nearest-branch territory algorithm computes.

Arrays are indexed ``[k, j, i]`` (slice, row, column) like ``slicer.util.arrayFromVolume``.
Everything is deterministic: the anatomy is fixed, the seed drives the noise and the UIDs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .. import terminology
from ..errors import InputDataError
from ..progress import ProgressCallback, report, scaled

DEFAULT_SHAPE = (512, 512, 300)
DEFAULT_SPACING_MM = (0.7, 0.7, 1.0)
FIELD_OF_VIEW_MM = tuple(
    n * s for n, s in zip(DEFAULT_SHAPE, DEFAULT_SPACING_MM, strict=True)
)  # 358.4, 358.4, 300
# Centre of the field of view in LPS; z is off-centre so that slice positions look like a real
# table position rather than a symmetric range.
FOV_CENTRE_LPS = (0.0, 0.0, -10.0)

# Target HU in the arterial (corticomedullary) phase.
HU = {
    "air": -1000.0,
    "fat": -100.0,
    "muscle": 50.0,
    "liver": 90.0,
    "spleen": 110.0,
    "cortex": 180.0,
    "medulla": 90.0,
    "urine": 10.0,
    "tumour": 40.0,
    "artery": 300.0,
    "vein": 160.0,
    "bone_cortex": 800.0,
    "bone_cancellous": 250.0,
    "bone_posterior": 600.0,
    "disc": 90.0,
    "canal": 30.0,
    "rib_core": 300.0,
}
NOISE_SD_HU = 12.0
# Partial-volume blur (Gaussian sigma in mm): in-plane and along z.
BLUR_SIGMA_MM = (0.45, 0.45, 0.6)
HU_MIN, HU_MAX = -1024, 3071  # what a 12-bit CT reconstruction can hold

PATIENT_NAME = "VSP^Phantom"

# Label values of the exclusive label map (finest structure wins). Compound structures (kidney
# as a whole, collecting system, arterial tree, ribs) have no value of their own; see
# Phantom.mask().
LABELS: dict[str, int] = {
    "subcutaneous_fat": 1,
    "abdominal_wall_muscle": 2,
    "visceral_fat": 3,
    "erector_spinae_left": 4,
    "erector_spinae_right": 5,
    "psoas_left": 6,
    "psoas_right": 7,
    "spine": 8,
    "spinal_cord": 9,
    "rib_left": 10,
    "rib_right": 11,
    "liver": 12,
    "spleen": 13,
    "aorta": 14,
    "ivc": 15,
    "kidney_left_cortex": 20,
    "kidney_left_medulla": 21,
    "renal_pelvis_left": 22,
    "calyx_left": 23,
    "renal_artery_left": 24,
    "renal_vein_left": 25,
    "tumour": 26,
    "kidney_right_cortex": 40,
    "kidney_right_medulla": 41,
    "renal_pelvis_right": 42,
    "calyx_right": 43,
    "renal_artery_right": 44,
    "renal_vein_right": 45,
}
for _side, _base in (("left", 31), ("right", 51)):
    for _n, (_segment, _) in enumerate(terminology.SEGMENTAL_ARTERY_SEGMENTS):
        LABELS[f"segmental_artery_{_side}_{_segment}"] = _base + _n


# --------------------------------------------------------------------------------------------
# Public data classes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Structure:
    """One value of the label map: its terminology key, display name, colour and parents."""

    label: int
    key: str
    name: str
    colour: tuple[float, float, float]
    part_of: tuple[str, ...] = ()

    @property
    def term(self) -> terminology.StructureTerm:
        return terminology.term(self.key)


@dataclass(frozen=True)
class Territory:
    """The kidney region perfused by one segmental artery (perfusion map value = artery label)."""

    label: int
    artery_key: str
    kidney_key: str
    voxel_count: int
    volume_ml: float
    fraction: float


@dataclass(frozen=True)
class PatientInfo:
    """Obviously synthetic patient and study identity, deterministic from the seed."""

    name: str
    patient_id: str
    birth_date: str
    sex: str
    study_uid: str
    series_uid: str
    frame_of_reference_uid: str
    study_date: str
    study_time: str
    accession_number: str


@dataclass(frozen=True, eq=False)
class GroundTruth:
    """Analytic facts about the phantom, in LPS millimetres and millilitres."""

    tumour_centre_lps: tuple[float, float, float]
    tumour_diameter_mm: float
    tumour_kidney: str
    tumour_exophytic_fraction: float  # share of the tumour volume outside the kidney's outline
    kidney_centres_lps: dict[str, tuple[float, float, float]]
    # Intrarenal centreline of each segmental artery (the polyline that defines its territory).
    segmental_centrelines_lps: dict[str, np.ndarray]
    spine_x_mm: float
    # Closed-form volumes of shapes nothing else overlaps (tumour sphere, aorta and IVC
    # cylinders, spinal canal, body) and the kidneys' outer ellipsoids (renal sinus included).
    analytic_volumes_ml: dict[str, float]


@dataclass
class Phantom:
    """The generated case: CT (HU), exclusive label map, perfusion map, geometry and identity."""

    ct_hu: np.ndarray = field(repr=False)  # int16 [k, j, i]
    labels: np.ndarray = field(repr=False)  # uint8 [k, j, i]
    # uint8 [k, j, i]: 0 outside the kidneys, else the label of the perfusing segmental artery
    perfusion: np.ndarray = field(repr=False)
    spacing_mm: tuple[float, float, float]  # (i, j, k)
    origin_lps: tuple[float, float, float]  # centre of voxel (0, 0, 0)
    direction_lps: np.ndarray  # 3x3, columns are the i, j, k axes
    structures: list[Structure] = field(repr=False)
    territories: list[Territory] = field(repr=False)
    seed: int
    patient: PatientInfo
    truth: GroundTruth = field(repr=False)
    tumour_diameter_mm: float = 30.0
    _by_key: dict[str, Structure] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self._by_key = {s.key: s for s in self.structures}

    @property
    def shape(self) -> tuple[int, int, int]:
        """(columns i, rows j, slices k)."""
        k, j, i = self.labels.shape
        return (i, j, k)

    def ijk_to_lps(self) -> np.ndarray:
        """4x4 matrix mapping (i, j, k, 1) to LPS millimetres."""
        m = np.eye(4)
        m[:3, :3] = self.direction_lps @ np.diag(self.spacing_mm)
        m[:3, 3] = self.origin_lps
        return m

    def ijk_to_ras(self) -> np.ndarray:
        """4x4 matrix mapping (i, j, k, 1) to RAS millimetres (Slicer's IJKToRAS)."""
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ self.ijk_to_lps()

    def structure(self, key: str) -> Structure:
        try:
            return self._by_key[key]
        except KeyError:
            raise InputDataError(
                f"the phantom has no labelled structure {key!r}",
                subject="phantom",
                fix=f"use one of: {', '.join(sorted(self._by_key))}",
            ) from None

    def label_values(self, key: str) -> list[int]:
        """Label values of a structure, or of all parts of a compound structure."""
        if key in self._by_key:
            return [self._by_key[key].label]
        t = terminology.term(key)
        if not t.parts:
            raise InputDataError(f"the phantom has no structure {key!r}", subject="phantom")
        values: list[int] = []
        for part in t.parts:
            values += self.label_values(part)
        return values

    def mask(self, key: str) -> np.ndarray:
        """Boolean mask [k, j, i] of a structure; compound keys (e.g. "kidney_left") are unions."""
        values = self.label_values(key)
        if len(values) == 1:
            return self.labels == values[0]
        return np.isin(self.labels, values)

    def voxel_volume_ml(self) -> float:
        return float(np.prod(self.spacing_mm)) / 1000.0

    def volume_ml(self, key: str) -> float:
        return float(np.count_nonzero(self.mask(key))) * self.voxel_volume_ml()

    @property
    def facts(self) -> dict:
        """The ground truth as plain JSON-ready values (for case files and reports)."""
        t = self.truth
        return {
            "tumour_centre_lps": list(t.tumour_centre_lps),
            "tumour_diameter_mm": t.tumour_diameter_mm,
            "tumour_kidney": t.tumour_kidney,
            "tumour_exophytic_fraction": t.tumour_exophytic_fraction,
            "kidney_centres_lps": {k: list(v) for k, v in t.kidney_centres_lps.items()},
            "spine_x_mm": t.spine_x_mm,
            "segmental_centrelines_lps": {k: v.tolist() for k, v in t.segmental_centrelines_lps.items()},
            "analytic_volumes_ml": dict(t.analytic_volumes_ml),
            "territories": [
                {
                    "label": x.label,
                    "artery": x.artery_key,
                    "kidney": x.kidney_key,
                    "volume_ml": x.volume_ml,
                    "fraction": x.fraction,
                }
                for x in self.territories
            ],
            "perfusion_includes_tumour": True,
        }

    def reference_volume_ml(self, key: str, spacing_mm: float = 0.4) -> float:
        """The structure's volume in the analytic model, voxelised finely around it."""
        return model_volume_ml(key, tumour_diameter_mm=self.tumour_diameter_mm, spacing_mm=spacing_mm)


# --------------------------------------------------------------------------------------------
# Grid and painting machinery
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Grid:
    shape: tuple[int, int, int]  # (ni, nj, nk)
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]

    def axis(self, a: int) -> np.ndarray:
        return self.origin[a] + np.arange(self.shape[a], dtype=np.float64) * self.spacing[a]

    @property
    def array_shape(self) -> tuple[int, int, int]:
        return (self.shape[2], self.shape[1], self.shape[0])

    def index_range(self, a: int, lo: float, hi: float) -> tuple[int, int]:
        i0 = max(0, math.ceil((lo - self.origin[a]) / self.spacing[a] - 1e-9))
        i1 = min(self.shape[a], math.floor((hi - self.origin[a]) / self.spacing[a] + 1e-9) + 1)
        return i0, i1


# An operation paints some labels inside an axis-aligned box: evaluate(X, Y, Z) returns a label
# array (0 = leave the voxel alone) and an HU array, both broadcastable to the crop.
_Evaluate = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass
class _Op:
    labels: tuple[int, ...]
    lo: np.ndarray
    hi: np.ndarray
    evaluate: _Evaluate


def _paint(grid: _Grid, ops: Sequence[_Op], progress: ProgressCallback | None = None) -> tuple:
    """Paint the operations in order (later wins) in chunks of slices; returns labels and HU."""
    labels = np.zeros(grid.array_shape, np.uint8)
    hu = np.full(grid.array_shape, HU["air"], np.float32)
    x, y, z = grid.axis(0), grid.axis(1), grid.axis(2)
    nk = grid.shape[2]
    chunk = 24
    for k0 in range(0, nk, chunk):
        k1 = min(nk, k0 + chunk)
        for op in ops:
            ka, kb = grid.index_range(2, op.lo[2], op.hi[2])
            ka, kb = max(ka, k0), min(kb, k1)
            ja, jb = grid.index_range(1, op.lo[1], op.hi[1])
            ia, ib = grid.index_range(0, op.lo[0], op.hi[0])
            if ka >= kb or ja >= jb or ia >= ib:
                continue
            crop = (slice(ka, kb), slice(ja, jb), slice(ia, ib))
            lab, val = op.evaluate(x[ia:ib][None, None, :], y[ja:jb][None, :, None], z[ka:kb][:, None, None])
            shape = (kb - ka, jb - ja, ib - ia)
            lab = np.broadcast_to(lab, shape)
            m = lab > 0
            if not m.any():
                continue
            labels[crop][m] = lab[m]
            hu[crop][m] = np.broadcast_to(val, shape)[m]
        report(progress, k1 / nk, "Drawing the anatomy")
    return labels, hu


def _solid(label: int, hu: float, lo, hi, inside: Callable) -> _Op:
    def evaluate(X, Y, Z):
        m = inside(X, Y, Z)
        return np.where(m, np.uint8(label), np.uint8(0)), np.float32(hu)

    return _Op((label,), np.asarray(lo, float), np.asarray(hi, float), evaluate)


def _capsule(
    label: int, hu: float, p0, p1, r0: float, r1: float, core: tuple[float, float] | None = None
) -> _Op:
    """A tube segment from p0 to p1 whose radius goes linearly from r0 to r1.

    ``core=(depth_mm, hu)`` gives the inside (deeper than depth) its own HU, e.g. marrow in a rib.
    """
    p0 = np.asarray(p0, float)
    p1 = np.asarray(p1, float)
    d = p1 - p0
    length2 = max(float(d @ d), 1e-12)
    rmax = max(r0, r1)
    lo = np.minimum(p0, p1) - rmax
    hi = np.maximum(p0, p1) + rmax

    def evaluate(X, Y, Z):
        dx, dy, dz = X - p0[0], Y - p0[1], Z - p0[2]
        t = np.clip((dx * d[0] + dy * d[1] + dz * d[2]) / length2, 0.0, 1.0)
        ex, ey, ez = dx - t * d[0], dy - t * d[1], dz - t * d[2]
        dist = np.sqrt(ex * ex + ey * ey + ez * ez)
        radius = r0 + t * (r1 - r0)
        m = dist <= radius
        val = np.float32(hu)
        if core is not None:
            val = np.where(dist <= radius - core[0], np.float32(core[1]), np.float32(hu))
        return np.where(m, np.uint8(label), np.uint8(0)), val

    return _Op((label,), lo, hi, evaluate)


def _tube(label: int, hu: float, points: np.ndarray, radii: Sequence[float], core=None) -> list[_Op]:
    return [
        _capsule(label, hu, points[n], points[n + 1], radii[n], radii[n + 1], core)
        for n in range(len(points) - 1)
    ]


def _superellipse(X, Y, cx: float, cy: float, a: float, b: float, n: float) -> np.ndarray:
    return (np.abs(X - cx) / a) ** n + (np.abs(Y - cy) / b) ** n <= 1.0


def _rotation_z(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _ellipsoid(label: int, hu: float, centre, axes: np.ndarray, semi, exponent: float = 2.0) -> _Op:
    """A (super)ellipsoid; ``axes`` columns are its unit axes in LPS."""
    centre = np.asarray(centre, float)
    semi = np.asarray(semi, float)
    half = np.abs(axes) @ semi
    inv = axes.T

    def inside(X, Y, Z):
        dx, dy, dz = X - centre[0], Y - centre[1], Z - centre[2]
        total = 0.0
        for row in range(3):
            local = inv[row, 0] * dx + inv[row, 1] * dy + inv[row, 2] * dz
            total = total + (np.abs(local) / semi[row]) ** exponent
        return total <= 1.0

    return _solid(label, hu, centre - half, centre + half, inside)


def _distance_to_polyline(points: np.ndarray, line: np.ndarray) -> np.ndarray:
    """Distance (mm) from each of N points (N x 3) to a polyline (M x 3)."""
    best = np.full(len(points), np.inf)
    for a, b in zip(line[:-1], line[1:], strict=True):
        d = b - a
        t = np.clip(((points - a) @ d) / max(float(d @ d), 1e-12), 0.0, 1.0)
        e = points - (a + t[:, None] * d)
        best = np.minimum(best, np.sqrt(np.einsum("ij,ij->i", e, e)))
    return best


# --------------------------------------------------------------------------------------------
# Anatomy (millimetres, LPS)
# --------------------------------------------------------------------------------------------

# Body cross-section: superellipse |x/A|^n + |y/B|^n <= 1, constant along z.
BODY = {"a": 160.0, "b": 115.0, "n": 2.3}
SUBCUTANEOUS_FAT_MM = 18.0
WALL_MUSCLE_MM = 12.0
AORTA = {"x": 12.0, "y": 8.0, "r": 11.0}
IVC = {"x": -26.0, "y": 4.0, "a": 14.0, "b": 8.0}
CANAL = {"x": 0.0, "y": 72.0, "r": 10.0}
VERTEBRA_PERIOD_MM = 35.0
VERTEBRA_HALF_HEIGHT_MM = 13.5


@dataclass
class _Kidney:
    side: str
    centre: np.ndarray
    axes: np.ndarray  # columns u (lateral border), v (posterior surface), w (upper pole)
    semi: np.ndarray  # a, b, c along u, v, w
    cortex_mm: float = 6.0
    perirenal_fat_mm: float = 7.0
    sinus_centre: np.ndarray = field(default_factory=lambda: np.array([-9.0, 0.0, 0.0]))
    sinus_semi: np.ndarray = field(default_factory=lambda: np.array([17.0, 10.0, 31.0]))
    pyramids: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # (apex, base) local
    pyramid_base_radius_mm: float = 14.0

    def to_world(self, local) -> np.ndarray:
        local = np.atleast_2d(np.asarray(local, float))
        return self.centre + local @ self.axes.T

    def local(self, X, Y, Z):
        dx, dy, dz = X - self.centre[0], Y - self.centre[1], Z - self.centre[2]
        a = self.axes
        u = a[0, 0] * dx + a[1, 0] * dy + a[2, 0] * dz
        v = a[0, 1] * dx + a[1, 1] * dy + a[2, 1] * dz
        w = a[0, 2] * dx + a[1, 2] * dy + a[2, 2] * dz
        return u, v, w

    def in_sinus(self, u, v, w):
        s, c = self.sinus_semi, self.sinus_centre
        ell = ((u - c[0]) / s[0]) ** 2 + ((v - c[1]) / s[1]) ** 2 + ((w - c[2]) / s[2]) ** 2 <= 1.0
        # The hilum: a slot from the sinus out through the medial border.
        slot = (u <= c[0]) & (np.abs(v) <= 8.0) & (np.abs(w) <= 16.0)
        return ell | slot


def _unit(v) -> np.ndarray:
    v = np.asarray(v, float)
    return v / np.linalg.norm(v)


def _ray_to_ellipsoid(origin: np.ndarray, direction: np.ndarray, semi: np.ndarray, centre=None) -> float:
    """Distance along a ray from a point inside an axis-aligned ellipsoid to its surface."""
    centre = np.zeros(3) if centre is None else centre
    o = (origin - centre) / semi
    d = direction / semi
    a = d @ d
    b = 2 * o @ d
    c = o @ o - 1
    return float((-b + math.sqrt(b * b - 4 * a * c)) / (2 * a))


def _make_kidney(side: str) -> _Kidney:
    s = 1.0 if side == "left" else -1.0
    # The left kidney sits higher than the right (the liver pushes the right one down).
    centre = np.array([74.0 * s, 46.0, 14.0 if side == "left" else -10.0])
    # Upper pole medial and posterior; hilum facing anteromedially.
    w = _unit([-0.2 * s, 0.15, 1.0])
    hilum = _unit([-s * math.cos(math.radians(30)), -math.sin(math.radians(30)), 0.0])
    u = _unit(-hilum - (-hilum @ w) * w)
    # +v is the posterior surface on both sides (so the right kidney's frame is mirrored).
    v = s * np.cross(w, u)
    kidney = _Kidney(side, centre, np.column_stack([u, v, w]), np.array([28.0, 21.0, 55.0]))
    # Medullary pyramids: apex (papilla) on the sinus, base on the inner cortex surface.
    inner = kidney.semi - kidney.cortex_mm
    directions = []
    for psi in (8.0, 36.0, 64.0, 92.0, 120.0, 148.0, 174.0):  # coronal row, from the upper pole
        directions.append((psi, 0.0))
    for psi in (40.0, 90.0, 140.0):  # anterior and posterior rows
        directions += [(psi, 55.0), (psi, -55.0)]
    for psi, phi in directions:
        d = _unit(
            [
                math.sin(math.radians(psi)) * math.cos(math.radians(phi)),
                math.sin(math.radians(psi)) * math.sin(math.radians(phi)),
                math.cos(math.radians(psi)),
            ]
        )
        c0 = kidney.sinus_centre
        apex = c0 + d * _ray_to_ellipsoid(c0, d, kidney.sinus_semi, kidney.sinus_centre)
        base = c0 + d * _ray_to_ellipsoid(c0, d, inner)
        kidney.pyramids.append((apex, base))
    return kidney


def _kidney_op(kidney: _Kidney, prefix: str) -> _Op:
    """Perirenal fat, cortex, medulla and renal sinus fat of one kidney."""
    cortex, medulla, fat = LABELS[f"{prefix}_cortex"], LABELS[f"{prefix}_medulla"], LABELS["visceral_fat"]
    outer = kidney.semi + kidney.perirenal_fat_mm
    half = np.abs(kidney.axes) @ outer
    inner = kidney.semi - kidney.cortex_mm

    def evaluate(X, Y, Z):
        u, v, w = kidney.local(X, Y, Z)
        a, b, c = kidney.semi
        env = (u / a) ** 2 + (v / b) ** 2 + (w / c) ** 2 <= 1.0
        peri = (u / outer[0]) ** 2 + (v / outer[1]) ** 2 + (w / outer[2]) ** 2 <= 1.0
        core = (u / inner[0]) ** 2 + (v / inner[1]) ** 2 + (w / inner[2]) ** 2 <= 1.0
        sinus = kidney.in_sinus(u, v, w)
        pyramid = np.zeros(np.broadcast_shapes(u.shape, v.shape, w.shape), bool)
        candidates = core & ~sinus
        for apex, base in kidney.pyramids:
            axis = base - apex
            length = float(np.linalg.norm(axis))
            e = axis / length
            pu, pv, pw = u - apex[0], v - apex[1], w - apex[2]
            t = (pu * e[0] + pv * e[1] + pw * e[2]) / length
            ru, rv, rw = pu - t * length * e[0], pv - t * length * e[1], pw - t * length * e[2]
            radial = np.sqrt(ru * ru + rv * rv + rw * rw)
            pyramid |= (t >= 0.0) & (radial <= kidney.pyramid_base_radius_mm * t)
        is_medulla = candidates & pyramid
        lab = np.where(peri, np.uint8(fat), np.uint8(0))
        lab = np.where(env & ~sinus, np.uint8(cortex), lab)
        lab = np.where(is_medulla, np.uint8(medulla), lab)
        val = np.where(lab == cortex, np.float32(HU["cortex"]), np.float32(HU["fat"]))
        val = np.where(lab == medulla, np.float32(HU["medulla"]), val)
        return lab, val

    return _Op((cortex, medulla), kidney.centre - half, kidney.centre + half, evaluate)


# Segmental arteries in the kidney's local frame (u lateral, v posterior, w superior): the
# division point outside the hilum, the entry into the sinus, then into the parenchyma. The
# polyline from the sinus entry on is the intrarenal centreline that defines the territory.
_SEGMENTAL_PATHS: dict[str, list[tuple[float, float, float]]] = {
    "apical": [(-18.0, 0.0, 10.0), (-6.0, 0.0, 30.0), (3.0, 0.0, 45.0)],
    "upper": [(-18.0, -3.0, 6.0), (-6.0, -8.0, 14.0), (13.0, -11.0, 20.0)],
    "middle": [(-18.0, -3.0, -2.0), (-6.0, -8.0, -8.0), (14.0, -11.0, -10.0)],
    "lower": [(-18.0, 1.0, -10.0), (-8.0, 3.0, -30.0), (-1.0, 5.0, -45.0)],
    "posterior": [(-18.0, 4.0, 2.0), (-6.0, 9.0, 2.0), (14.0, 11.0, 2.0)],
}
_DIVISION_LOCAL = (-34.0, 2.0, 0.0)


def _segmental_lines(kidney: _Kidney) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per segment: (full polyline from the division point, intrarenal part), in LPS mm."""
    division = kidney.to_world(_DIVISION_LOCAL)[0]
    lines = {}
    for segment, path in _SEGMENTAL_PATHS.items():
        intrarenal = kidney.to_world(path)
        lines[segment] = (np.vstack([division, intrarenal]), intrarenal)
    return lines


@dataclass
class _Anatomy:
    """All shapes of the phantom, in painting order (later wins)."""

    tumour_diameter_mm: float
    kidneys: dict[str, _Kidney] = field(default_factory=dict)
    tumour_centre: np.ndarray = field(default_factory=lambda: np.zeros(3))
    segmental: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)
    ops: list[_Op] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.kidneys = {side: _make_kidney(side) for side in ("left", "right")}
        self.segmental = {side: _segmental_lines(k) for side, k in self.kidneys.items()}
        self.tumour_centre = self._place_tumour()
        self.ops = self._build_ops()

    def _place_tumour(self) -> np.ndarray:
        # Lower pole, lateral and anterior; the centre lies 4 mm inside the kidney's outer
        # surface so that about a third of a 30 mm tumour bulges out (exophytic).
        kidney = self.kidneys["left"]
        n = _unit([0.6, -0.35, -0.72])
        surface = kidney.semi * n / math.sqrt(float(np.sum(n * n)))
        normal = _unit(surface / kidney.semi**2)
        return kidney.to_world(surface - 4.0 * normal)[0]

    def tumour_exophytic_fraction(self, samples: int = 400_000) -> float:
        """Share of the tumour sphere outside the left kidney's outer ellipsoid (Monte Carlo)."""
        rng = np.random.default_rng(20250101)  # fixed: a property of the model, not of the seed
        directions = rng.standard_normal((samples, 3))
        directions /= np.linalg.norm(directions, axis=1)[:, None]
        radii = self.tumour_diameter_mm / 2 * rng.random(samples) ** (1 / 3)
        points = self.tumour_centre + directions * radii[:, None]
        kidney = self.kidneys["left"]
        u, v, w = kidney.local(points[:, 0], points[:, 1], points[:, 2])
        a, b, c = kidney.semi
        inside = (u / a) ** 2 + (v / b) ** 2 + (w / c) ** 2 <= 1.0
        return float(1.0 - inside.mean())

    def _build_ops(self) -> list[_Op]:
        ops: list[_Op] = []
        big = 1e4
        body_a, body_b, n = BODY["a"], BODY["b"], BODY["n"]
        a1, b1 = body_a - SUBCUTANEOUS_FAT_MM, body_b - SUBCUTANEOUS_FAT_MM
        a2, b2 = a1 - WALL_MUSCLE_MM, b1 - WALL_MUSCLE_MM

        def inner1(X, Y):
            return _superellipse(X, Y, 0.0, 0.0, a1, b1, n)

        def cavity(X, Y):
            return _superellipse(X, Y, 0.0, 0.0, a2, b2, n)

        ops.append(
            _solid(
                LABELS["subcutaneous_fat"],
                HU["fat"],
                (-body_a, -body_b, -big),
                (body_a, body_b, big),
                lambda X, Y, Z: _superellipse(X, Y, 0.0, 0.0, body_a, body_b, n),
            )
        )
        ops.append(
            _solid(
                LABELS["abdominal_wall_muscle"],
                HU["muscle"],
                (-a1, -b1, -big),
                (a1, b1, big),
                lambda X, Y, Z: inner1(X, Y),
            )
        )
        ops.append(
            _solid(
                LABELS["visceral_fat"],
                HU["fat"],
                (-a2, -b2, -big),
                (a2, b2, big),
                lambda X, Y, Z: cavity(X, Y),
            )
        )
        for side, s in (("left", 1.0), ("right", -1.0)):
            cx, cy = 36.0 * s, 80.0
            ops.append(
                _solid(
                    LABELS[f"erector_spinae_{side}"],
                    HU["muscle"],
                    (cx - 24, cy - 17, -big),
                    (cx + 24, cy + 17, big),
                    lambda X, Y, Z, cx=cx, cy=cy: (
                        (((X - cx) / 24.0) ** 2 + ((Y - cy) / 17.0) ** 2 <= 1.0) & inner1(X, Y)
                    ),
                )
            )
            ops.append(self._psoas(side, s))
        ops.append(
            _ellipsoid(
                LABELS["liver"],
                HU["liver"],
                (-72.0, -12.0, 85.0),
                np.eye(3),
                (70.0, 78.0, 75.0),
                exponent=2.5,
            )
        )
        ops[-1] = _clip(ops[-1], cavity)
        spleen_axes = _rotation_z(35.0)
        ops.append(
            _clip(
                _ellipsoid(
                    LABELS["spleen"], HU["spleen"], (85.0, 50.0, 92.0), spleen_axes, (25.0, 45.0, 52.0)
                ),
                cavity,
            )
        )
        for side in ("left", "right"):
            ops += self._kidney_ops(side)
        ops += self._vessel_ops()
        d = self.tumour_diameter_mm
        c = self.tumour_centre
        ops.append(
            _solid(
                LABELS["tumour"],
                HU["tumour"],
                c - d / 2,
                c + d / 2,
                lambda X, Y, Z: (X - c[0]) ** 2 + (Y - c[1]) ** 2 + (Z - c[2]) ** 2 <= (d / 2) ** 2,
            )
        )
        ops += self._rib_ops()
        ops.append(self._spine_op())
        return ops

    def _psoas(self, side: str, s: float) -> _Op:
        # Grows from its origin at T12/L1 (z = 60) toward the pelvis.
        cx, cy, top = 44.0 * s, 44.0, 60.0
        label = LABELS[f"psoas_{side}"]

        def evaluate(X, Y, Z):
            a = 8.0 + 0.07 * (top - Z)
            b = 0.85 * a
            m = (((X - cx) / a) ** 2 + ((Y - cy) / b) ** 2 <= 1.0) & (top >= Z)
            return np.where(m, np.uint8(label), np.uint8(0)), np.float32(HU["muscle"])

        return _Op((label,), np.array([cx - 30, cy - 26, -1e4]), np.array([cx + 30, cy + 26, top]), evaluate)

    def _kidney_ops(self, side: str) -> list[_Op]:
        kidney = self.kidneys[side]
        prefix = f"kidney_{side}"
        ops = [_kidney_op(kidney, prefix)]
        pelvis, calyx = LABELS[f"renal_pelvis_{side}"], LABELS[f"calyx_{side}"]
        pelvis_centre = kidney.to_world((-15.0, 1.0, -3.0))[0]
        ops.append(_ellipsoid(pelvis, HU["urine"], pelvis_centre, kidney.axes, (8.0, 5.0, 13.0)))
        # The pelvis narrows as it leaves the hilum (ureteropelvic junction).
        ops += _tube(
            pelvis, HU["urine"], kidney.to_world([(-15.0, 1.0, -5.0), (-38.0, 3.0, -18.0)]), [4.5, 3.5]
        )
        for apex, base in kidney.pyramids:
            e = _unit(base - apex)
            cup = kidney.to_world(apex - 1.5 * e)[0]
            ops.append(_ellipsoid(calyx, HU["urine"], cup, np.eye(3), (4.0, 4.0, 4.0)))
            ops += _tube(calyx, HU["urine"], np.vstack([cup, pelvis_centre]), [2.0, 2.5])
        return ops

    def _vessel_ops(self) -> list[_Op]:
        ops: list[_Op] = []
        kl, kr = self.kidneys["left"], self.kidneys["right"]
        ivc_z = (-1e4, 1e4)
        # Renal veins: from inside the renal sinus out through the hilum (anterior to the
        # artery) to the IVC; the left one crosses in front of the aorta.
        left_vein = np.vstack(
            [
                kl.to_world([(-14.0, -4.0, -2.0), (-36.0, -7.0, -2.0)]),
                [[25.0, -8.0, 18.0], [12.0, -11.0, 17.0], [-22.0, 2.0, 16.0]],
            ]
        )
        ops += _tube(LABELS["renal_vein_left"], HU["vein"], left_vein, [3.5, 5.0, 5.0, 5.0, 5.0])
        right_vein = np.vstack(
            [kr.to_world([(-14.0, -4.0, -2.0), (-36.0, -7.0, -2.0)]), [[-24.0, 2.0, -6.0]]]
        )
        ops += _tube(LABELS["renal_vein_right"], HU["vein"], right_vein, [3.5, 5.0, 5.0])
        ops.append(
            _solid(
                LABELS["ivc"],
                HU["vein"],
                (IVC["x"] - IVC["a"], IVC["y"] - IVC["b"], ivc_z[0]),
                (IVC["x"] + IVC["a"], IVC["y"] + IVC["b"], ivc_z[1]),
                lambda X, Y, Z: ((X - IVC["x"]) / IVC["a"]) ** 2 + ((Y - IVC["y"]) / IVC["b"]) ** 2 <= 1.0,
            )
        )
        # Segmental arteries (thinning toward the parenchyma), then the renal arteries from the
        # aorta to the division point; the right one runs behind the IVC.
        for side in ("left", "right"):
            for segment, (full, _) in self.segmental[side].items():
                ops += _tube(
                    LABELS[f"segmental_artery_{side}_{segment}"], HU["artery"], full, [2.2, 2.0, 1.7, 1.2]
                )
        division_l = kl.to_world(_DIVISION_LOCAL)[0]
        division_r = kr.to_world(_DIVISION_LOCAL)[0]
        left_artery = np.array([[AORTA["x"] + 6.0, AORTA["y"] + 4.0, 28.0], [30.0, 16.0, 24.0], division_l])
        ops += _tube(LABELS["renal_artery_left"], HU["artery"], left_artery, [3.0, 3.0, 2.8])
        right_artery = np.array(
            [[AORTA["x"] - 8.0, AORTA["y"] + 6.0, 8.0], [-8.0, 19.0, 6.0], [-30.0, 20.0, 2.0], division_r]
        )
        ops += _tube(LABELS["renal_artery_right"], HU["artery"], right_artery, [3.0, 3.0, 3.0, 2.8])
        ops.append(
            _solid(
                LABELS["aorta"],
                HU["artery"],
                (AORTA["x"] - AORTA["r"], AORTA["y"] - AORTA["r"], -1e4),
                (AORTA["x"] + AORTA["r"], AORTA["y"] + AORTA["r"], 1e4),
                lambda X, Y, Z: (X - AORTA["x"]) ** 2 + (Y - AORTA["y"]) ** 2 <= AORTA["r"] ** 2,
            )
        )
        return ops

    def _rib_ops(self) -> list[_Op]:
        # Ribs 9-12 run in the body wall from the spine around the flank, descending as they
        # go; each is a tube with a cortical shell and a marrow core.
        ops: list[_Op] = []
        ring_a = BODY["a"] - SUBCUTANEOUS_FAT_MM - WALL_MUSCLE_MM / 2
        ring_b = BODY["b"] - SUBCUTANEOUS_FAT_MM - WALL_MUSCLE_MM / 2
        n = BODY["n"]
        for side, s in (("left", 1.0), ("right", -1.0)):
            for z0, end_deg in ((150.0, 150.0), (125.0, 135.0), (100.0, 112.0), (75.0, 80.0)):
                phis = np.radians(np.linspace(25.0, end_deg, 24))
                xs = s * ring_a * np.abs(np.sin(phis)) ** (2 / n)
                ys = ring_b * np.sign(np.cos(phis)) * np.abs(np.cos(phis)) ** (2 / n)
                zs = z0 - 70.0 * (phis - phis[0]) / math.radians(125.0)
                path = np.vstack([[s * 20.0, 64.0, z0 + 4.0], np.column_stack([xs, ys, zs])])
                radii = [4.5] + [5.0] * (len(path) - 2) + [4.0]
                ops += _tube(
                    LABELS[f"rib_{side}"], HU["bone_cortex"], path, radii, core=(1.5, HU["rib_core"])
                )
        return ops

    def _spine_op(self) -> _Op:
        spine, canal = LABELS["spine"], LABELS["spinal_cord"]

        def evaluate(X, Y, Z):
            zz = Z - VERTEBRA_PERIOD_MM * np.round(Z / VERTEBRA_PERIOD_MM)
            level = np.abs(zz) <= VERTEBRA_HALF_HEIGHT_MM
            e_body = (X / 25.0) ** 2 + ((Y - 42.0) / 19.0) ** 2
            in_body = e_body <= 1.0
            shell = (X / 23.5) ** 2 + ((Y - 42.0) / 17.5) ** 2 > 1.0
            end_plate = np.abs(zz) > VERTEBRA_HALF_HEIGHT_MM - 1.5
            r_canal = np.sqrt((X - CANAL["x"]) ** 2 + (Y - CANAL["y"]) ** 2)
            arch = (r_canal > CANAL["r"]) & (r_canal <= 17.0) & (Y >= 58.0) & (np.abs(zz) <= 10.0)
            spinous = (np.abs(X) <= 4.0) & (Y >= 80.0) & (Y <= 100.0) & (np.abs(zz) <= 8.0)
            transverse = (
                (np.abs(X) >= 17.0) & (np.abs(X) <= 52.0) & (Y >= 60.0) & (Y <= 71.0) & (np.abs(zz) <= 6.0)
            )
            posterior = arch | spinous | transverse
            in_canal = r_canal <= CANAL["r"]
            lab = np.where(in_body | posterior, np.uint8(spine), np.uint8(0))
            lab = np.where(in_canal, np.uint8(canal), lab)
            val = np.where(
                level, np.where(shell | end_plate, HU["bone_cortex"], HU["bone_cancellous"]), HU["disc"]
            )
            val = np.where(posterior & ~in_body, HU["bone_posterior"], val)
            val = np.where(in_canal, HU["canal"], val).astype(np.float32)
            return lab, val

        return _Op((spine, canal), np.array([-55.0, 20.0, -1e4]), np.array([55.0, 101.0, 1e4]), evaluate)

    def bounds(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        values = set(_label_values(key))
        boxes = [(op.lo, op.hi) for op in self.ops if values & set(op.labels)]
        if not boxes:
            raise InputDataError(f"no shape draws {key!r}", subject="phantom")
        lo = np.min([b[0] for b in boxes], axis=0)
        hi = np.max([b[1] for b in boxes], axis=0)
        return lo, hi


def _clip(op: _Op, region2d: Callable) -> _Op:
    """Restrict an operation to where region2d(X, Y) is true (e.g. inside the abdominal cavity)."""
    inner = op.evaluate

    def evaluate(X, Y, Z):
        lab, val = inner(X, Y, Z)
        return np.where(region2d(X, Y), lab, np.uint8(0)), val

    return _Op(op.labels, op.lo, op.hi, evaluate)


def _read_only(array: np.ndarray) -> np.ndarray:
    copy = np.array(array, float)
    copy.setflags(write=False)
    return copy


def _label_values(key: str) -> list[int]:
    if key in LABELS:
        return [LABELS[key]]
    t = terminology.term(key)
    if not t.parts:
        raise InputDataError(f"the phantom has no structure {key!r}", subject="phantom")
    values: list[int] = []
    for part in t.parts:
        values += _label_values(part)
    return values


# --------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------


def _grid_for(shape: Sequence[int], spacing_mm: Sequence[float] | None) -> _Grid:
    if len(shape) != 3 or any(int(n) < 2 for n in shape):
        raise InputDataError(
            f"phantom shape {tuple(shape)} is not three sizes of at least 2",
            subject="phantom shape",
            fix="give (columns, rows, slices), e.g. (128, 128, 75)",
        )
    shape = tuple(int(n) for n in shape)
    if spacing_mm is None:
        spacing = tuple(f / n for f, n in zip(FIELD_OF_VIEW_MM, shape, strict=True))
    else:
        if len(spacing_mm) != 3 or any(float(s) <= 0 for s in spacing_mm):
            raise InputDataError(
                f"phantom spacing {tuple(spacing_mm)} is not three positive sizes",
                subject="phantom spacing",
                fix="give (i, j, k) spacing in millimetres, or None to keep the standard field of view",
            )
        spacing = tuple(float(s) for s in spacing_mm)
    origin = tuple(c - (n - 1) * s / 2.0 for c, n, s in zip(FOV_CENTRE_LPS, shape, spacing, strict=True))
    return _Grid(shape, spacing, origin)  # type: ignore[arg-type]


def _patient(seed: int, shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> PatientInfo:
    from pydicom.uid import generate_uid

    base = ["SlicerVSP synthetic phantom", str(seed)]
    # The study and frame of reference depend only on the seed (same anatomy, same patient);
    # the series also on the grid, since a different grid is a different series.
    return PatientInfo(
        name=PATIENT_NAME,
        patient_id=f"VSP-PHANTOM-{seed}",
        birth_date="19700101",
        sex="O",
        study_uid=generate_uid(entropy_srcs=base + ["study"]),
        series_uid=generate_uid(entropy_srcs=base + ["series", repr(shape), repr(spacing)]),
        frame_of_reference_uid=generate_uid(entropy_srcs=base + ["frame of reference"]),
        study_date="20250101",
        study_time="120000",
        accession_number=f"VSPPH{seed}"[:16],
    )


def _structures() -> list[Structure]:
    parents: dict[str, list[str]] = {}
    for t in terminology.STRUCTURES.values():
        for part in t.parts:
            parents.setdefault(part, []).append(t.key)
    result = []
    for key, value in sorted(LABELS.items(), key=lambda kv: kv[1]):
        t = terminology.term(key)
        result.append(Structure(value, key, t.name, t.colour, tuple(parents.get(key, ()))))
    return result


def _perfusion(grid: _Grid, labels: np.ndarray, anatomy: _Anatomy) -> tuple[np.ndarray, list[Territory]]:
    perfusion = np.zeros(labels.shape, np.uint8)
    territories: list[Territory] = []
    voxel_ml = float(np.prod(grid.spacing)) / 1000.0
    for side in ("left", "right"):
        kidney_key = f"kidney_{side}"
        values = _label_values(kidney_key)
        lo, hi = anatomy.bounds(kidney_key)
        ka, kb = grid.index_range(2, lo[2], hi[2])
        ja, jb = grid.index_range(1, lo[1], hi[1])
        ia, ib = grid.index_range(0, lo[0], hi[0])
        crop = (slice(ka, kb), slice(ja, jb), slice(ia, ib))
        inside = np.isin(labels[crop], values)
        kk, jj, ii = np.nonzero(inside)
        points = np.column_stack(
            [
                grid.origin[0] + (ii + ia) * grid.spacing[0],
                grid.origin[1] + (jj + ja) * grid.spacing[1],
                grid.origin[2] + (kk + ka) * grid.spacing[2],
            ]
        )
        segments = list(anatomy.segmental[side])
        distances = np.stack([_distance_to_polyline(points, anatomy.segmental[side][s][1]) for s in segments])
        nearest = np.argmin(distances, axis=0)
        artery_labels = np.array([LABELS[f"segmental_artery_{side}_{s}"] for s in segments], np.uint8)
        view = perfusion[crop]
        view[kk, jj, ii] = artery_labels[nearest]
        total = max(len(points), 1)
        for n, segment in enumerate(segments):
            count = int(np.count_nonzero(nearest == n))
            territories.append(
                Territory(
                    label=int(artery_labels[n]),
                    artery_key=f"segmental_artery_{side}_{segment}",
                    kidney_key=kidney_key,
                    voxel_count=count,
                    volume_ml=count * voxel_ml,
                    fraction=count / total,
                )
            )
    return perfusion, territories


def _analytic_volumes(anatomy: _Anatomy, grid: _Grid) -> dict[str, float]:
    length = grid.shape[2] * grid.spacing[2]
    n = BODY["n"]
    body_area = 4 * BODY["a"] * BODY["b"] * math.gamma(1 + 1 / n) ** 2 / math.gamma(1 + 2 / n)
    volumes = {
        "tumour": math.pi / 6 * anatomy.tumour_diameter_mm**3,
        "aorta": math.pi * AORTA["r"] ** 2 * length,
        "ivc": math.pi * IVC["a"] * IVC["b"] * length,
        "spinal_cord": math.pi * CANAL["r"] ** 2 * length,
        "body": body_area * length,
    }
    for side, kidney in anatomy.kidneys.items():
        volumes[f"kidney_{side}_envelope"] = 4 / 3 * math.pi * float(np.prod(kidney.semi))
    return {k: v / 1000.0 for k, v in volumes.items()}


def generate_phantom(
    shape: Sequence[int] = DEFAULT_SHAPE,
    *,
    spacing_mm: Sequence[float] | None = None,
    seed: int = 0,
    tumour_diameter_mm: float = 30.0,
    progress: ProgressCallback | None = None,
) -> Phantom:
    """Generate the synthetic abdominal CT (arterial phase) with its label and perfusion maps.

    ``shape`` is (columns i, rows j, slices k). Without ``spacing_mm`` the field of view stays
    358.4 x 358.4 x 300 mm (0.7 x 0.7 x 1.0 mm at the default shape), so smaller grids show the
    same anatomy, coarser. ``seed`` drives the noise and the UIDs; the anatomy is fixed.
    """
    if not 5.0 <= float(tumour_diameter_mm) <= 45.0:
        raise InputDataError(
            f"tumour diameter {tumour_diameter_mm} mm is outside 5..45 mm",
            subject="phantom tumour",
            fix="choose a diameter the lower pole of the left kidney can hold (5 to 45 mm)",
        )
    grid = _grid_for(shape, spacing_mm)
    anatomy = _Anatomy(float(tumour_diameter_mm))
    labels, hu = _paint(grid, anatomy.ops, scaled(progress, 0.0, 0.55))
    report(progress, 0.55, "Assigning perfusion territories")
    perfusion, territories = _perfusion(grid, labels, anatomy)

    report(progress, 0.65, "Simulating partial volume")
    sigma = [
        BLUR_SIGMA_MM[2] / grid.spacing[2],
        BLUR_SIGMA_MM[1] / grid.spacing[1],
        BLUR_SIGMA_MM[0] / grid.spacing[0],
    ]
    blurred = ndimage.gaussian_filter(hu, sigma=sigma, mode="nearest", truncate=3.0)
    del hu

    report(progress, 0.8, "Adding noise")
    rng = np.random.default_rng(seed)
    ct = np.empty(labels.shape, np.int16)
    nk = labels.shape[0]
    for k in range(nk):
        # One draw per slice in slice order keeps the noise independent of any chunking.
        noisy = blurred[k] + rng.standard_normal(labels.shape[1:], dtype=np.float32) * np.float32(NOISE_SD_HU)
        ct[k] = np.clip(np.rint(noisy), HU_MIN, HU_MAX).astype(np.int16)
        if k % 32 == 0:
            report(progress, 0.8 + 0.2 * k / nk, "Adding noise")
    del blurred

    truth = GroundTruth(
        tumour_centre_lps=tuple(float(c) for c in anatomy.tumour_centre),  # type: ignore[arg-type]
        tumour_diameter_mm=float(tumour_diameter_mm),
        tumour_kidney="kidney_left",
        tumour_exophytic_fraction=anatomy.tumour_exophytic_fraction(),
        kidney_centres_lps={
            f"kidney_{side}": tuple(float(c) for c in k.centre)  # type: ignore[misc]
            for side, k in anatomy.kidneys.items()
        },
        segmental_centrelines_lps={
            f"segmental_artery_{side}_{segment}": _read_only(lines[1])
            for side, by_segment in anatomy.segmental.items()
            for segment, lines in by_segment.items()
        },
        spine_x_mm=CANAL["x"],
        analytic_volumes_ml=_analytic_volumes(anatomy, grid),
    )
    phantom = Phantom(
        ct_hu=ct,
        labels=labels,
        perfusion=perfusion,
        spacing_mm=grid.spacing,
        origin_lps=grid.origin,
        direction_lps=np.eye(3),
        structures=_structures(),
        territories=territories,
        seed=int(seed),
        patient=_patient(int(seed), grid.shape, grid.spacing),
        truth=truth,
        tumour_diameter_mm=float(tumour_diameter_mm),
    )
    report(progress, 1.0, "Phantom ready")
    return phantom


def model_volume_ml(key: str, *, tumour_diameter_mm: float = 30.0, spacing_mm: float = 0.4) -> float:
    """Volume (mL) of a structure in the analytic model, voxelised at ``spacing_mm`` around it.

    This is the reference that coarse grids converge to; it accounts for everything that
    overlaps the structure (e.g. vessels inside the kidney), unlike a closed-form volume.
    """
    anatomy = _Anatomy(float(tumour_diameter_mm))
    lo, hi = anatomy.bounds(key)
    # Clip unbounded extents (z of extruded shapes) to the standard field of view.
    fov_lo = np.array(FOV_CENTRE_LPS) - np.array(FIELD_OF_VIEW_MM) / 2
    fov_hi = np.array(FOV_CENTRE_LPS) + np.array(FIELD_OF_VIEW_MM) / 2
    lo, hi = np.maximum(lo, fov_lo), np.minimum(hi, fov_hi)
    shape = tuple(max(2, int(math.ceil((h - low) / spacing_mm)) + 1) for low, h in zip(lo, hi, strict=True))
    grid = _Grid(shape, (spacing_mm,) * 3, tuple(float(v) for v in lo))  # type: ignore[arg-type]
    ops = [op for op in anatomy.ops if np.all(op.hi >= lo) and np.all(op.lo <= hi)]
    labels, _ = _paint(grid, ops)
    count = int(np.count_nonzero(np.isin(labels, _label_values(key))))
    return count * spacing_mm**3 / 1000.0
