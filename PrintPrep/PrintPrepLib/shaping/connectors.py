"""Connectors: struts that join disjoint parts into one printable body, and an optional base.

The parts are fused with manifold3d (exact, robust booleans on 2-manifolds) and split into
their connected bodies. Bodies are joined along a minimum spanning tree of their shortest gaps
(so every body is reached and no strut is longer than needed): each strut is a cylinder from
the closest point of one body to the closest point of the other, running `embed` mm into both so
that the union fuses instead of touching. The result must be one body; anything else raises.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import numpy as np

from ..errors import BooleanError, PrintPrepError
from ._common import (
    checked,
    cylinder_between,
    from_manifold,
    positive,
    solid_bodies,
    to_manifold,
    unit_vector,
)


def _named_parts(parts) -> list[tuple[str, object]]:
    import trimesh

    if isinstance(parts, trimesh.Trimesh):
        return [("model", parts)]
    if isinstance(parts, Mapping):
        return [(str(key), value) for key, value in parts.items()]
    if isinstance(parts, Sequence) and not isinstance(parts, (str, bytes)):
        return [(f"part {index + 1}", value) for index, value in enumerate(parts)]
    raise PrintPrepError(
        f"expected a mesh, a list of meshes or a name → mesh mapping, got {type(parts).__name__}",
        fix="pass the parts as trimesh.Trimesh objects",
    )


def _union(solids, name):
    import manifold3d

    if len(solids) == 1:
        return solids[0]
    return checked(
        manifold3d.Manifold.batch_boolean(list(solids), manifold3d.OpType.Add), "union of the parts", name
    )


def _closest_pair(points_a, tree_a, points_b):
    distance, index = tree_a.query(points_b, k=1, workers=-1)
    best = int(np.argmin(distance))
    return float(distance[best]), points_a[index[best]], points_b[best]


def connect_parts(
    parts,
    strut_diameter_mm: float = 3.0,
    *,
    embed_mm: float | None = None,
    base_thickness_mm: float | None = None,
    down=(0.0, 0.0, -1.0),
    base_gap_mm: float = 5.0,
    base_margin_mm: float = 5.0,
    name: str = "assembly",
):
    """Fuse parts into one body with struts of `strut_diameter_mm` mm between disjoint bodies.

    parts: a trimesh, a list of them or a {name: trimesh} mapping (RAS mm). embed_mm: how deep a
    strut runs into each body (default: its diameter). base_thickness_mm: add a plate that thick
    under the model (along `down`), base_gap_mm below its lowest point and base_margin_mm wider
    than its footprint, with one pillar to each body's lowest point.

    Returns (one watertight trimesh, report with the struts' end points in RAS, lengths in mm
    and the parts they join, the volumes in mm³ and the time taken).
    """
    from scipy.sparse.csgraph import minimum_spanning_tree
    from scipy.spatial import cKDTree

    started = time.perf_counter()
    diameter = positive(strut_diameter_mm, "the strut diameter (mm)", name)
    embed = diameter if embed_mm is None else positive(embed_mm, "the strut embedding (mm)", name)
    named = _named_parts(parts)
    if not named:
        raise PrintPrepError("no parts to connect", subject=name, fix="give at least one part")
    solids = [to_manifold(mesh, part_name) for part_name, mesh in named]
    volume_parts = float(sum(solid.volume() for solid in solids))
    fused = _union(solids, name)
    bodies = solid_bodies(fused)
    vertices = [np.asarray(body.to_mesh64().vert_properties, dtype=float)[:, :3] for body in bodies]
    trees = [cKDTree(points) for points in vertices]
    # Which input parts each body holds (a part's first vertex lies on or in its body).
    members = [[] for _ in bodies]
    for part_name, mesh in named:
        probe = np.asarray(mesh.vertices[:1], dtype=float)
        gaps = [tree.query(probe, k=1)[0][0] for tree in trees]
        members[int(np.argmin(gaps))].append(part_name)
    struts = []
    tools = []
    count = len(bodies)
    if count > 1:
        gap = np.zeros((count, count))
        pairs = {}
        for i in range(count):
            for j in range(i + 1, count):
                distance, a, b = _closest_pair(vertices[i], trees[i], vertices[j])
                gap[i, j] = max(distance, 1e-6)
                pairs[i, j] = (a, b)
        tree = minimum_spanning_tree(gap).tocoo()
        for i, j in zip(tree.row, tree.col, strict=True):
            i, j = (int(i), int(j)) if i < j else (int(j), int(i))
            a, b = pairs[i, j]
            direction = b - a
            length = float(np.linalg.norm(direction))
            if length < 1e-6:
                direction = vertices[j].mean(0) - vertices[i].mean(0)
            direction = direction / np.linalg.norm(direction)
            tools.append(cylinder_between(a - direction * embed, b + direction * embed, diameter))
            struts.append(
                {
                    "joins": [", ".join(members[i]), ", ".join(members[j])],
                    "from_ras_mm": np.round(a, 3).tolist(),
                    "to_ras_mm": np.round(b, 3).tolist(),
                    "gap_mm": round(length, 3),
                    "diameter_mm": diameter,
                }
            )
    base = None
    if base_thickness_mm is not None:
        thickness = positive(base_thickness_mm, "the base thickness (mm)", name)
        base, pillars = _base(
            bodies,
            vertices,
            unit_vector(down, "the down vector", name),
            thickness,
            base_gap_mm,
            base_margin_mm,
            diameter,
            embed,
        )
        tools.extend(pillars)
    if tools or base is not None:
        import manifold3d

        everything = [fused, *tools] + ([base] if base is not None else [])
        fused = checked(
            manifold3d.Manifold.batch_boolean(everything, manifold3d.OpType.Add), "fusing struts", name
        )
    pieces = len(solid_bodies(fused))
    if pieces != 1:
        raise BooleanError(
            f"the connected model still has {pieces} separate bodies after fusing {len(struts)} strut(s)",
            subject=name,
            fix="give a larger strut diameter or embedding, or repair the parts",
        )
    result = from_manifold(fused)
    if not result.is_watertight:
        raise BooleanError(
            "the fused model is not watertight", subject=name, fix="repair the parts and retry"
        )
    report = {
        "bodies_before": count,
        "struts": struts,
        "strut_diameter_mm": diameter,
        "base_thickness_mm": None if base is None else float(base_thickness_mm),
        "volume_parts_mm3": round(volume_parts, 3),
        "volume_after_mm3": round(fused.volume(), 3),
        "watertight": True,
        "bodies_after": 1,
        "elapsed_s": round(time.perf_counter() - started, 3),
    }
    return result, report


def _base(bodies, vertices, down, thickness, gap, margin, diameter, embed):
    """A plate under the bodies (along `down`) and one pillar from each body's lowest point."""
    import manifold3d

    gap = positive(gap, "the base gap (mm)")
    margin = positive(margin, "the base margin (mm)")
    # Frame: columns u, v in the plate, w = up.
    w = -down
    u = np.cross(w, [1.0, 0.0, 0.0] if abs(w[0]) < 0.9 else [0.0, 1.0, 0.0])
    u /= np.linalg.norm(u)
    v = np.cross(w, u)
    everything = np.vstack(vertices)
    lowest_height = float((everything @ w).min())
    footprint = manifold3d.CrossSection.hull_points(
        np.column_stack([everything @ u, everything @ v]).tolist()
    )
    footprint = footprint.offset(margin, manifold3d.JoinType.Round)
    plate = manifold3d.Manifold.extrude(footprint, thickness)
    top = lowest_height - gap
    frame = np.zeros((3, 4))
    frame[:, 0], frame[:, 1], frame[:, 2] = u, v, w
    frame[:, 3] = w * (top - thickness)
    plate = plate.transform(frame)
    pillars = []
    for points in vertices:
        lowest = points[int(np.argmin(points @ w))]
        foot = lowest - w * ((lowest @ w) - (top - thickness / 2))
        pillars.append(cylinder_between(foot, lowest + w * embed, diameter))
    return plate, pillars
