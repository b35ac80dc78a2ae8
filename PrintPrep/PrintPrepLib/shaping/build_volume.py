"""Build volume: fit check, splitting into parts that fit (with alignment pins), orientation.

- fit_check: the model's extent in its current axes (R, A, S ↔ printer x, y, z) and in its
  tightest oriented box against the printer's build volume.
- split_to_fit: cut by planes across the axes that do not fit (equal slabs, manifold3d
  split_by_plane); at each cut, cylindrical pins are added to one side and matching holes (with
  a clearance) cut into the other, placed in the cut face eroded by the pin radius and a rim.
  Every part must fit (pins included) and be watertight, or it raises.
- suggest_orientation: candidate build directions (the 6 axes and 200 directions spread over the
  sphere); for each, the overhang area is the area of faces facing down steeper than the
  overhang angle (45° from vertical by default), less those on the build plate; the least
  overhang wins, ties broken by the lowest build height.
"""

from __future__ import annotations

import time

import numpy as np

from ..errors import PrintPrepError
from ._common import (
    checked,
    cylinder_between,
    from_manifold,
    positive,
    rotation_from_z,
    solid_bodies,
    to_manifold,
)

AXES = ("R", "A", "S")


def _build_volume(build_volume_mm, name):
    values = (
        np.asarray(build_volume_mm, dtype=float).reshape(-1) if build_volume_mm is not None else np.zeros(0)
    )
    if values.size != 3 or not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise PrintPrepError(
            f"the build volume must be three positive lengths (x, y, z mm), got {build_volume_mm!r}",
            subject=name,
            fix="give the printer's build volume, e.g. (250, 210, 220)",
        )
    return values


def fit_check(mesh, build_volume_mm, *, name: str = "model") -> dict:
    """Whether the model fits the build volume as it is (R, A, S ↔ x, y, z) and in any orientation."""
    volume = _build_volume(build_volume_mm, name)
    to_manifold(mesh, name)
    extent = np.ptp(np.asarray(mesh.bounds, dtype=float), axis=0)
    oriented = np.sort(np.asarray(mesh.bounding_box_oriented.primitive.extents, dtype=float))
    return {
        "build_volume_mm": volume.tolist(),
        "extent_mm": np.round(extent, 3).tolist(),
        "fits_as_is": bool(np.all(extent <= volume)),
        "axes_too_long": [AXES[i] for i in range(3) if extent[i] > volume[i]],
        "oriented_extent_mm": np.round(oriented, 3).tolist(),
        "fits_rotated": bool(np.all(oriented <= np.sort(volume))),
    }


def _frame(axis: int) -> np.ndarray:
    """Rows: two in-plane axes and the cut axis, right-handed (cyclic order)."""
    eye = np.eye(3)
    return np.stack([eye[(axis + 1) % 3], eye[(axis + 2) % 3], eye[axis]])


def _pin_sites(piece, axis: int, offset: float, keep_out: float, per_cut: int):
    """Pin centres (RAS mm) in the cut face of piece at `offset` along axis, keep_out mm inside its edge."""
    import manifold3d

    rows = _frame(axis)
    matrix = np.zeros((3, 4))
    matrix[:, :3] = rows
    section = piece.transform(matrix).slice(offset)
    eroded = section.offset(-keep_out, manifold3d.JoinType.Round)
    sites = []
    for component in eroded.decompose():
        points = np.vstack([np.asarray(p, dtype=float) for p in component.to_polygons()])
        if len(points) == 0:
            continue
        if per_cut >= 2 and len(points) > 1:
            distance = np.linalg.norm(points[:, None] - points[None], axis=2)
            i, j = np.unravel_index(np.argmax(distance), distance.shape)
            chosen = [points[i], points[j]] if distance[i, j] >= 2 * keep_out else [points[i]]
        else:
            chosen = [points[0]]
        for a, b in chosen:
            sites.append(a * rows[0] + b * rows[1] + offset * rows[2])
    return sites


def split_to_fit(
    mesh,
    build_volume_mm,
    *,
    pin_diameter_mm: float = 4.0,
    pin_length_mm: float = 8.0,
    clearance_mm: float = 0.2,
    margin_mm: float = 2.0,
    pins_per_cut: int = 2,
    name: str = "model",
):
    """Split the model by planes into parts that each fit the build volume, with alignment pins.

    The model keeps its axes (R, A, S ↔ printer x, y, z; orient it first). Each axis longer than
    the build volume less margin_mm is cut into equal slabs; at each cut the part below gets
    pins (pin_diameter_mm wide, pin_length_mm long, half in each part) and the part above
    matching holes pin_diameter_mm + 2 × clearance_mm wide and half a pin + clearance deep.

    Returns (list of watertight trimesh parts, report with the cut planes, each part's extent
    and volume, the pins' centres and the time taken).
    """
    import manifold3d

    started = time.perf_counter()
    volume = _build_volume(build_volume_mm, name)
    diameter = positive(pin_diameter_mm, "the pin diameter (mm)", name)
    length = positive(pin_length_mm, "the pin length (mm)", name)
    clearance = float(clearance_mm)
    if clearance < 0:
        raise PrintPrepError("the pin clearance cannot be negative", subject=name, fix="give 0.1-0.3 mm")
    margin = float(margin_mm)
    solid = to_manifold(mesh, name)
    bounds = np.asarray(mesh.bounds, dtype=float)
    pieces = [solid]
    cuts = []
    pins = []
    for axis in range(3):
        extent = bounds[1, axis] - bounds[0, axis]
        room = volume[axis] - margin - length / 2
        if extent <= volume[axis] - margin:
            continue
        if room <= 0:
            raise PrintPrepError(
                f"the build volume's {'xyz'[axis]} ({volume[axis]} mm) has no room for a slab with pins",
                subject=name,
                fix="give shorter pins or a larger printer",
            )
        count = int(np.ceil(extent / room))
        normal = np.eye(3)[axis]
        for k in range(1, count):
            offset = bounds[0, axis] + extent * k / count
            cuts.append({"axis": AXES[axis], "offset_mm": round(float(offset), 3)})
            next_pieces = []
            for piece in pieces:
                upper, lower = piece.split_by_plane(normal.tolist(), float(offset))
                if upper.is_empty() or lower.is_empty():
                    next_pieces.append(piece)
                    continue
                upper = checked(upper, "splitting by a plane", name)
                lower = checked(lower, "splitting by a plane", name)
                sites = _pin_sites(piece, axis, offset, diameter / 2 + clearance + 1.5, pins_per_cut)
                if sites:
                    pin_tools = [
                        cylinder_between(s - normal * length / 2, s + normal * length / 2, diameter)
                        for s in sites
                    ]
                    hole_tools = [
                        cylinder_between(
                            s - normal * 1.0, s + normal * (length / 2 + clearance), diameter + 2 * clearance
                        )
                        for s in sites
                    ]
                    lower = checked(
                        manifold3d.Manifold.batch_boolean([lower, *pin_tools], manifold3d.OpType.Add),
                        "adding pins",
                        name,
                    )
                    upper = checked(
                        upper - manifold3d.Manifold.batch_boolean(hole_tools, manifold3d.OpType.Add),
                        "cutting pin holes",
                        name,
                    )
                    pins.extend({"centre_ras_mm": np.round(s, 3).tolist(), "axis": AXES[axis]} for s in sites)
                next_pieces.extend([lower, upper])
            pieces = next_pieces
    parts = []
    part_reports = []
    for index, piece in enumerate(pieces):
        part = from_manifold(piece)
        extent = np.ptp(np.asarray(part.bounds), axis=0)
        entry = {
            "part": index + 1,
            "extent_mm": np.round(extent, 3).tolist(),
            "volume_mm3": round(piece.volume(), 3),
            "watertight": bool(part.is_watertight),
            "bodies": len(solid_bodies(piece)),
        }
        if not part.is_watertight:
            raise PrintPrepError(
                f"split part {index + 1} is not watertight", subject=name, fix="repair the model and retry"
            )
        if np.any(extent > volume):
            raise PrintPrepError(
                f"split part {index + 1} ({entry['extent_mm']} mm) still does not fit {volume.tolist()} mm",
                subject=name,
                fix="give a larger margin or shorter pins, or orient the model first",
            )
        parts.append(part)
        part_reports.append(entry)
    report = {
        "build_volume_mm": volume.tolist(),
        "cuts": cuts,
        "parts": part_reports,
        "pins": pins,
        "pin_diameter_mm": diameter,
        "pin_length_mm": length,
        "hole_diameter_mm": diameter + 2 * clearance,
        "elapsed_s": round(time.perf_counter() - started, 3),
    }
    return parts, report


def _directions(count: int = 200) -> np.ndarray:
    """The 6 axis directions and `count` directions spread evenly over the sphere (Fibonacci)."""
    index = np.arange(count) + 0.5
    polar = np.arccos(1 - 2 * index / count)
    azimuth = np.pi * (1 + 5**0.5) * index
    spread = np.column_stack(
        [np.cos(azimuth) * np.sin(polar), np.sin(azimuth) * np.sin(polar), np.cos(polar)]
    )
    return np.vstack([np.eye(3), -np.eye(3), spread])


def overhang_areas(mesh, downs: np.ndarray, overhang_angle_deg: float = 45.0, contact_mm: float = 0.5):
    """Overhang area (mm²) for each candidate down direction, and the build height (mm) along it."""
    normals = mesh.face_normals
    centres = mesh.triangles_center
    areas = mesh.area_faces
    heights = mesh.vertices @ downs.T  # larger is lower
    lowest = heights.max(axis=0)
    build_height = lowest - heights.min(axis=0)
    facing = normals @ downs.T > np.cos(np.radians(overhang_angle_deg))
    on_plate = (lowest[None, :] - centres @ downs.T) < contact_mm
    overhang = (facing & ~on_plate).astype(float)
    return areas @ overhang, build_height


def suggest_orientation(
    mesh, *, overhang_angle_deg: float = 45.0, contact_mm: float = 0.5, name: str = "model"
):
    """The build direction with the least overhang area (support), ties broken by build height.

    Returns (the mesh rotated about its centre so that the chosen down direction is -S, report
    with that down direction in the model's RAS, the overhang area (mm²) and build height (mm)
    chosen and as the model is now (down = -S), the 4×4 rotation and the time taken).
    """
    started = time.perf_counter()
    to_manifold(mesh, name)
    angle = positive(overhang_angle_deg, "the overhang angle (degrees)", name)
    downs = _directions()
    area, height = overhang_areas(mesh, downs, angle, contact_mm)
    tolerance = max(1.0, 0.01 * float(area.min()))
    candidates = np.flatnonzero(area <= area.min() + tolerance)
    best = int(candidates[np.argmin(height[candidates])])
    down = downs[best]
    rotation = rotation_from_z(-down).T  # takes `down` to -S
    centre = np.asarray(mesh.bounds, dtype=float).mean(axis=0)
    matrix = np.eye(4)
    matrix[:3, :3] = rotation
    matrix[:3, 3] = centre - rotation @ centre
    rotated = mesh.copy()
    rotated.apply_transform(matrix)
    now_area, now_height = overhang_areas(mesh, np.array([[0.0, 0.0, -1.0]]), angle, contact_mm)
    report = {
        "down_ras": np.round(down, 4).tolist(),
        "overhang_area_mm2": round(float(area[best]), 3),
        "build_height_mm": round(float(height[best]), 3),
        "current_overhang_area_mm2": round(float(now_area[0]), 3),
        "current_build_height_mm": round(float(now_height[0]), 3),
        "overhang_angle_deg": angle,
        "rotation": np.round(matrix, 6).tolist(),
        "candidates": int(len(downs)),
        "elapsed_s": round(time.perf_counter() - started, 3),
    }
    return rotated, report
