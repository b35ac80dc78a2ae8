"""Mesh repair: watertight, 2-manifold, outward normals, no self-intersections, no degenerate
faces, no small loose shells, with a before/after report.

The work is done by mesh libraries, not by topology code of our own: trimesh merges vertices,
drops degenerate and duplicate faces, splits shells, fixes winding and fills simple holes;
manifold3d (the Manifold library) then checks that the result is a closed 2-manifold and gives
the final, vertex-merged mesh; VTK's quadric decimation reduces large meshes. A mesh that is
still not a closed 2-manifold afterwards is a :class:`RepairError` that names the part and says
what to do, never a silent pass.

Self-intersections are counted with a spatial broad phase (scipy's k-d tree) and an exact
segment–triangle test on the candidate pairs (pairs that share a vertex are neighbours, not
intersections).
"""

from __future__ import annotations

from dataclasses import dataclass

import manifold3d
import numpy as np
import trimesh
import vtk
from scipy.spatial import cKDTree

from VSPCoreLib.errors import InputDataError

from .mesh import polydata_to_trimesh, trimesh_to_polydata


class RepairError(InputDataError):
    """A mesh that could not be made into a closed, 2-manifold, self-intersection-free solid."""


@dataclass
class RepairOptions:
    """``min_shell_volume_mm3``: loose shells smaller than this are removed (specks, islands).
    ``fill_holes``: close simple holes (trimesh). ``check_self_intersections``: count them
    (and refuse the mesh when some remain)."""

    min_shell_volume_mm3: float = 10.0
    fill_holes: bool = True
    check_self_intersections: bool = True

    def to_json(self) -> dict:
        return {
            "min_shell_volume_mm3": self.min_shell_volume_mm3,
            "fill_holes": self.fill_holes,
            "check_self_intersections": self.check_self_intersections,
        }


def _edges_info(mesh: trimesh.Trimesh) -> tuple[int, int]:
    """(boundary edges, non-manifold edges): edges used by one face, and by more than two."""
    if len(mesh.faces) == 0:
        return 0, 0
    edges = np.sort(mesh.edges, axis=1).astype(np.int64)
    _, counts = np.unique(edges[:, 0] * (int(edges.max()) + 1) + edges[:, 1], return_counts=True)
    return int(np.count_nonzero(counts == 1)), int(np.count_nonzero(counts > 2))


def mesh_counts(mesh: trimesh.Trimesh, *, self_intersections: bool = False) -> dict:
    """What a repair report counts: sizes, shells, open and non-manifold edges, degenerate faces."""
    merged = mesh.copy()
    merged.merge_vertices()
    boundary, non_manifold = _edges_info(merged)
    degenerate = int(len(merged.faces) - np.count_nonzero(merged.nondegenerate_faces()))
    duplicate = int(len(merged.faces) - len(merged.unique_faces()))
    counts = {
        "vertices": int(len(mesh.vertices)),
        "faces": int(len(mesh.faces)),
        "shells": int(
            len(trimesh.graph.connected_components(merged.face_adjacency, nodes=np.arange(len(merged.faces))))
        )
        if len(merged.faces)
        else 0,
        "boundary_edges": boundary,
        "non_manifold_edges": non_manifold,
        "degenerate_faces": degenerate,
        "duplicate_faces": duplicate,
        "watertight": bool(merged.is_watertight),
        "winding_consistent": bool(merged.is_winding_consistent),
        "volume_mm3": round(float(merged.volume), 3) if merged.is_watertight else None,
    }
    if self_intersections:
        counts["self_intersecting_face_pairs"] = count_self_intersections(merged)
    return counts


# --- self-intersections ----------------------------------------------------------------------


def _segments_cross_triangles(p0, p1, a, b, c, eps=1e-9) -> np.ndarray:
    """For each row: does the open segment p0→p1 cross triangle abc (Möller–Trumbore)?"""
    direction = p1 - p0
    e1, e2 = b - a, c - a
    h = np.cross(direction, e2)
    det = np.einsum("ij,ij->i", e1, h)
    ok = np.abs(det) > eps
    inv = np.zeros_like(det)
    inv[ok] = 1.0 / det[ok]
    s = p0 - a
    u = inv * np.einsum("ij,ij->i", s, h)
    q = np.cross(s, e1)
    v = inv * np.einsum("ij,ij->i", direction, q)
    t = inv * np.einsum("ij,ij->i", e2, q)
    return ok & (u > eps) & (v > eps) & (u + v < 1 - eps) & (t > eps) & (t < 1 - eps)


def count_self_intersections(mesh: trimesh.Trimesh, *, chunk: int = 200_000) -> int:
    """The number of face pairs that cross each other (faces sharing a vertex are skipped)."""
    faces = np.asarray(mesh.faces)
    if len(faces) < 2:
        return 0
    triangles = np.asarray(mesh.vertices)[faces]
    centres = triangles.mean(axis=1)
    radii = np.linalg.norm(triangles - centres[:, None, :], axis=2).max(axis=1)
    tree = cKDTree(centres)
    pairs = tree.query_pairs(r=2.0 * float(radii.max()), output_type="ndarray")
    if len(pairs) == 0:
        return 0
    close = (
        np.linalg.norm(centres[pairs[:, 0]] - centres[pairs[:, 1]], axis=1)
        <= radii[pairs[:, 0]] + radii[pairs[:, 1]]
    )
    pairs = pairs[close]
    fa, fb = faces[pairs[:, 0]], faces[pairs[:, 1]]
    shares = (fa[:, :, None] == fb[:, None, :]).any(axis=(1, 2))
    pairs = pairs[~shares]
    crossing = 0
    for start in range(0, len(pairs), chunk):
        part = pairs[start : start + chunk]
        ta, tb = triangles[part[:, 0]], triangles[part[:, 1]]
        hit = np.zeros(len(part), bool)
        for first, second in ((ta, tb), (tb, ta)):
            for i, j in ((0, 1), (1, 2), (2, 0)):
                hit |= _segments_cross_triangles(
                    first[:, i], first[:, j], second[:, 0], second[:, 1], second[:, 2]
                )
        crossing += int(np.count_nonzero(hit))
    return crossing


# --- decimation ------------------------------------------------------------------------------


def decimate(mesh: trimesh.Trimesh, reduction: float) -> trimesh.Trimesh:
    """Fewer triangles (``reduction`` 0.9 removes about 90 %), volume-preserving quadric
    decimation (VTK's vtkQuadricDecimation)."""
    if reduction <= 0.0:
        return mesh
    if not 0.0 < reduction < 1.0:
        raise InputDataError(
            f"decimation {reduction} is outside 0..1.",
            subject="decimation",
            fix="use a value from 0 up to 1.",
        )
    decimation = vtk.vtkQuadricDecimation()
    decimation.SetInputData(trimesh_to_polydata(mesh))
    decimation.SetTargetReduction(float(reduction))
    decimation.VolumePreservationOn()
    decimation.Update()
    return polydata_to_trimesh(decimation.GetOutput(), subject="decimated mesh")


# --- repair ----------------------------------------------------------------------------------


def _to_manifold(mesh: trimesh.Trimesh) -> manifold3d.Manifold:
    solid = manifold3d.Manifold(
        manifold3d.Mesh(
            vert_properties=np.ascontiguousarray(mesh.vertices, dtype=np.float32),
            tri_verts=np.ascontiguousarray(mesh.faces, dtype=np.uint32),
        )
    )
    return solid


def _from_manifold(solid: manifold3d.Manifold) -> trimesh.Trimesh:
    out = solid.to_mesh()
    return trimesh.Trimesh(
        vertices=np.asarray(out.vert_properties[:, :3], dtype=np.float64),
        faces=np.asarray(out.tri_verts, dtype=np.int64),
        process=False,
    )


def _oriented(shells: list[trimesh.Trimesh]) -> trimesh.Trimesh:
    """The shells as one mesh, each facing outwards, and cavities (shells inside an odd number
    of other shells) facing inwards, so that the solid's volume is the material's volume."""
    for shell in shells:
        if shell.is_watertight and shell.volume < 0:
            shell.invert()
    if len(shells) > 1:
        implicit = []
        for shell in shells:
            distance = vtk.vtkImplicitPolyDataDistance()
            distance.SetInput(trimesh_to_polydata(shell))
            implicit.append(distance)
        for i, shell in enumerate(shells):
            point = shell.vertices[0]
            depth = sum(
                1 for j, other in enumerate(implicit) if j != i and other.EvaluateFunction(*point) < 0.0
            )
            if depth % 2 == 1:
                shell.invert()
        return trimesh.util.concatenate(shells)
    return shells[0]


def repair(
    mesh: trimesh.Trimesh, options: RepairOptions | None = None, *, subject: str = "mesh"
) -> tuple[trimesh.Trimesh, dict]:
    """A closed, 2-manifold, outward-oriented copy of ``mesh`` and a before/after report.

    Raises RepairError when the mesh cannot be made a closed 2-manifold (holes too complex
    to fill, edges shared by more than two faces that merging does not resolve), when nothing
    is left after removing small shells, or when self-intersections remain.
    """
    options = options or RepairOptions()
    before = mesh_counts(mesh)
    work = mesh.copy()
    work.merge_vertices()
    work.update_faces(work.nondegenerate_faces())
    work.update_faces(work.unique_faces())
    work.remove_unreferenced_vertices()

    shells = work.split(only_watertight=False) if len(work.faces) else []
    kept, removed = [], []
    for shell in shells:
        volume = abs(float(shell.volume)) if shell.is_watertight else float(shell.bounding_box.volume)
        if volume >= options.min_shell_volume_mm3:
            kept.append(shell)
        else:
            removed.append(round(volume, 3))
    if not kept:
        raise RepairError(
            f"has no shell of at least {options.min_shell_volume_mm3} mm³ (largest: {max(removed, default=0)} mm³).",
            subject=subject,
            fix="check the segment, or lower the small-shell threshold.",
        )
    for shell in kept:
        trimesh.repair.fix_winding(shell)
        if options.fill_holes and not shell.is_watertight:
            trimesh.repair.fill_holes(shell)
            trimesh.repair.fix_winding(shell)
    work = _oriented(kept)
    boundary, non_manifold = _edges_info(work)
    if boundary or non_manifold or not work.is_winding_consistent:
        raise RepairError(
            f"is not a closed 2-manifold after repair ({boundary} open edges, {non_manifold} edges shared "
            "by more than two faces).",
            subject=subject,
            fix="smooth the segment (fill holes, remove thin bridges between structures) and try again, "
            "or raise the smoothing factor.",
        )
    try:
        solid = _to_manifold(work)
        status = solid.status()
    except Exception as error:  # noqa: BLE001 - manifold3d reports bad input as plain exceptions
        raise RepairError(f"manifold3d refused the mesh: {error}", subject=subject) from error
    if status != manifold3d.Error.NoError:
        raise RepairError(
            f"is not a valid 2-manifold solid (manifold3d: {status.name}).",
            subject=subject,
            fix="smooth the segment or change the smoothing/decimation and try again.",
        )
    result = _from_manifold(solid)
    if result.volume < 0:  # all shells inside out: turn them outwards
        result.invert()
    after = mesh_counts(result, self_intersections=options.check_self_intersections)
    if options.check_self_intersections and after["self_intersecting_face_pairs"]:
        raise RepairError(
            f"has {after['self_intersecting_face_pairs']} self-intersecting face pairs.",
            subject=subject,
            fix="lower the smoothing or decimation factor (strong smoothing folds thin parts).",
        )
    report = {
        "before": before,
        "after": after,
        "removed_shells_mm3": removed,
        "options": options.to_json(),
        "software": f"trimesh {trimesh.__version__}, manifold3d",
    }
    return result, report
