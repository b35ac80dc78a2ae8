"""Mesh repair: watertight, 2-manifold, outward normals, no self-intersections, no degenerate
faces, no small loose shells, with a before/after report.

The work is done by mesh libraries, not by topology code of our own: trimesh merges vertices,
drops degenerate and duplicate faces, splits shells, fixes winding and fills simple holes;
manifold3d (the Manifold library) then checks that the result is a closed 2-manifold and gives
the final, vertex-merged mesh; quadric decimation (fast_simplification) reduces large meshes. A mesh that is
still not a closed 2-manifold afterwards is a :class:`RepairError` that names the part and says
what to do, never a silent pass.

Self-intersections are counted with a broad phase on the faces' bounding boxes (a uniform
grid, each overlapping pair reported once), a plane-side rejection and an exact segment–triangle
test on what is left (pairs that share a vertex are neighbours, not intersections). Edges,
shells and winding are counted with numpy and scipy's connected components, once per mesh.
"""

from __future__ import annotations

from dataclasses import dataclass

import manifold3d
import numpy as np
import trimesh
import vtk
from scipy import sparse
from scipy.sparse import csgraph

from VSPCoreLib.errors import InputDataError

from .mesh import trimesh_to_polydata


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


def _distinct(values: np.ndarray) -> np.ndarray:
    """The distinct values, sorted (by sorting: faster here than numpy's hash-based unique)."""
    values = np.sort(values)
    return values[np.r_[True, values[1:] != values[:-1]]] if len(values) else values


def _edge_keys(faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keys of the faces' edges (3 per face, in face order): undirected and directed."""
    n = np.int64(int(faces.max()) + 1 if len(faces) else 1)
    directed = faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2).astype(np.int64)
    return np.sort(directed, axis=1) @ np.array([n, 1]), directed @ np.array([n, 1])


def _topology(faces: np.ndarray) -> dict:
    """Edges and shells of a face list (vertices already merged): open edges (one face),
    non-manifold edges (more than two faces), consistent winding (every shared edge run in
    opposite directions by its two faces), and the shells, groups of faces joined through
    shared edges (scipy's connected components), with each face's shell label."""
    faces = np.asarray(faces, dtype=np.int64)
    if len(faces) == 0:
        return {
            "faces": 0,
            "boundary": 0,
            "non_manifold": 0,
            "winding": False,
            "shells": 0,
            "labels": np.zeros(0, int),
        }
    undirected, directed = _edge_keys(faces)
    order = np.argsort(undirected, kind="stable")
    sorted_keys = undirected[order]
    starts = np.r_[True, sorted_keys[1:] != sorted_keys[:-1]]
    uses = np.diff(np.r_[np.flatnonzero(starts), len(sorted_keys)])
    same = ~starts[1:]  # consecutive entries of one edge: their faces are joined
    face = order // 3
    graph = sparse.coo_matrix(
        (np.ones(int(same.sum()), dtype=np.int8), (face[:-1][same], face[1:][same])),
        shape=(len(faces), len(faces)),
    )
    shells, labels = csgraph.connected_components(graph, directed=False)
    non_manifold = int(np.count_nonzero(uses > 2))
    return {
        "faces": int(len(faces)),
        "boundary": int(np.count_nonzero(uses == 1)),
        "non_manifold": non_manifold,
        "winding": non_manifold == 0 and len(_distinct(directed)) == len(directed),
        "shells": int(shells),
        "labels": labels,
    }


def mesh_counts(mesh: trimesh.Trimesh, *, self_intersections: bool = False, merged: bool = False) -> dict:
    """What a repair report counts: sizes, shells, open and non-manifold edges, degenerate and
    duplicate faces, watertightness, consistent winding, enclosed volume.

    Counted on the mesh with coincident vertices merged (``merged=True``: it already is).
    """
    work = mesh
    if not merged:
        work = mesh.copy()
        work.merge_vertices()
    counts = _counts(work, _topology(work.faces), self_intersections=self_intersections)
    counts.update(vertices=int(len(mesh.vertices)), faces=int(len(mesh.faces)))
    return counts


def _closed_topology(topology: dict) -> bool:
    return topology["faces"] > 0 and topology["boundary"] == 0 and topology["non_manifold"] == 0


def _counts(work: trimesh.Trimesh, topology: dict, *, self_intersections: bool = False) -> dict:
    faces = np.asarray(work.faces, dtype=np.int64)
    watertight = _closed_topology(topology)
    counts = {
        "vertices": int(len(work.vertices)),
        "faces": int(len(faces)),
        "shells": topology["shells"],
        "boundary_edges": topology["boundary"],
        "non_manifold_edges": topology["non_manifold"],
        "degenerate_faces": int(len(faces) - np.count_nonzero(work.nondegenerate_faces()))
        if len(faces)
        else 0,
        "duplicate_faces": int(len(faces) - len(np.unique(np.sort(faces, axis=1), axis=0)))
        if len(faces)
        else 0,
        "watertight": bool(watertight),
        "winding_consistent": bool(topology["winding"]),
        "volume_mm3": round(signed_volume(work), 3) if watertight else None,
    }
    if self_intersections:
        counts["self_intersecting_face_pairs"] = count_self_intersections(work)
    return counts


def signed_volume(mesh: trimesh.Trimesh) -> float:
    """The volume enclosed by a closed mesh (mm³; negative when its faces point inwards):
    the sum of the signed tetrahedra from the origin to every face (divergence theorem)."""
    v = np.asarray(mesh.vertices, dtype=np.float64)
    f = np.asarray(mesh.faces)
    if len(f) == 0:
        return 0.0
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    # Relative to a point of the mesh: fewer digits lost than relative to the scanner's origin.
    centre = v[f[0, 0]]
    return float(np.einsum("ij,ij->", a - centre, np.cross(b - centre, c - centre)) / 6.0)


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


def _candidate_pairs(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Every pair (i, j) of boxes that overlap, once (the broad phase).

    A uniform grid whose cell is the 99th percentile of the boxes' sizes; a box is entered in
    every cell it covers (so no overlapping pair is missed), and a pair is reported only by the
    cell that holds the corner where the two boxes' overlap begins (so it is reported once).
    """
    size = float(np.percentile((high - low).max(axis=1), 99))
    size = size if size > 0 else 1.0
    origin = low.min(axis=0)
    first = np.floor((low - origin) / size).astype(np.int64)
    last = np.floor((high - origin) / size).astype(np.int64)
    span = last - first + 1
    per_box = span.prod(axis=1)
    box = np.repeat(np.arange(len(low)), per_box)
    local = np.arange(len(box)) - np.repeat(np.cumsum(per_box) - per_box, per_box)
    sx, sy = span[box, 0], span[box, 1]
    cells = first[box] + np.stack([local % sx, (local // sx) % sy, local // (sx * sy)], axis=1)
    dims = last.max(axis=0) + 1
    key = (cells[:, 2] * dims[1] + cells[:, 1]) * dims[0] + cells[:, 0]
    order = np.argsort(key, kind="stable")
    key, box = key[order], box[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    ends = np.repeat(np.r_[starts[1:], len(key)], np.diff(np.r_[starts, len(key)]))
    position = np.arange(len(key))
    out = []
    step = 1
    while True:
        position = position[ends[position] - position > step]
        if not len(position):
            break
        a, b = box[position], box[position + step]
        # Boxes that overlap, reported once: by the cell holding the corner where the overlap starts.
        corner = np.maximum(low[a], low[b])
        overlap = np.all(corner <= np.minimum(high[a], high[b]), axis=1)
        c = np.floor((corner[overlap] - origin) / size).astype(np.int64)
        home = (c[:, 2] * dims[1] + c[:, 1]) * dims[0] + c[:, 0] == key[position[overlap]]
        out.append(np.stack([a[overlap][home], b[overlap][home]], axis=1))
        step += 1
    return np.concatenate(out) if out else np.zeros((0, 2), np.int64)


def _straddles(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """For each row: do the vertices of triangle ``second`` not all lie strictly on one side of
    the plane of triangle ``first``? (If they do, the two cannot cross.)"""
    normal = np.cross(first[:, 1] - first[:, 0], first[:, 2] - first[:, 0])
    side = np.einsum("ij,ikj->ik", normal, second - first[:, None, 0])
    tolerance = 1e-12 * np.einsum("ij,ij->i", normal, normal)[:, None] ** 0.5
    return ~(np.all(side > tolerance, axis=1) | np.all(side < -tolerance, axis=1))


def count_self_intersections(mesh: trimesh.Trimesh, *, chunk: int = 500_000) -> int:
    """The number of face pairs that cross each other (faces sharing a vertex are skipped).

    Broad phase: the pairs whose bounding boxes overlap (:func:`_candidate_pairs`); narrow phase: a pair whose one triangle lies strictly on one side of
    the other's plane cannot cross; the rest get the exact edge–triangle test both ways.
    """
    faces = np.asarray(mesh.faces, dtype=np.int64)
    if len(faces) < 2:
        return 0
    triangles = np.asarray(mesh.vertices, dtype=np.float64)[faces]
    low, high = triangles.min(axis=1), triangles.max(axis=1)
    pairs = _candidate_pairs(low, high)
    crossing = 0
    for start in range(0, len(pairs), chunk):
        part = pairs[start : start + chunk]
        a, b = part[:, 0], part[:, 1]
        keep = ~(faces[a][:, :, None] == faces[b][:, None, :]).any(axis=(1, 2))
        a, b = a[keep], b[keep]
        ta, tb = triangles[a], triangles[b]
        keep = _straddles(ta, tb)
        ta, tb = ta[keep], tb[keep]
        keep = _straddles(tb, ta)
        ta, tb = ta[keep], tb[keep]
        hit = np.zeros(len(ta), bool)
        for first, second in ((ta, tb), (tb, ta)):
            for i, j in ((0, 1), (1, 2), (2, 0)):
                hit |= _segments_cross_triangles(
                    first[:, i], first[:, j], second[:, 0], second[:, 1], second[:, 2]
                )
        crossing += int(np.count_nonzero(hit))
    return crossing


# --- decimation ------------------------------------------------------------------------------


def decimate(mesh: trimesh.Trimesh, reduction: float) -> trimesh.Trimesh:
    """Fewer triangles (``reduction`` 0.9 removes about 90 %): quadric edge-collapse decimation
    (Garland–Heckbert error quadrics, the Fast-Quadric-Mesh-Simplification library through
    ``fast_simplification``). It keeps a closed 2-manifold closed, and the shape within a small
    fraction of a triangle's size; repair checks the result. (VTK's vtkQuadricDecimation took
    about 10 s on a million triangles and could leave non-manifold edges.)"""
    if reduction <= 0.0:
        return mesh
    if not 0.0 < reduction < 1.0:
        raise InputDataError(
            f"decimation {reduction} is outside 0..1.",
            subject="decimation",
            fix="use a value from 0 up to 1.",
        )
    import fast_simplification

    vertices, faces = fast_simplification.simplify(
        np.ascontiguousarray(mesh.vertices, dtype=np.float64),
        np.ascontiguousarray(mesh.faces, dtype=np.int64),
        target_reduction=float(reduction),
    )
    if len(faces) == 0:
        raise InputDataError(
            "has no triangles left after decimation.", subject="decimation", fix="decimate less."
        )
    return trimesh.Trimesh(
        vertices=np.asarray(vertices, np.float64), faces=np.asarray(faces, np.int64), process=False
    )


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


def _oriented(shells: list[trimesh.Trimesh], closed: list[bool]) -> trimesh.Trimesh:
    """The shells as one mesh, each facing outwards, and cavities (shells inside an odd number
    of other shells) facing inwards, so that the solid's volume is the material's volume."""
    for shell, is_closed in zip(shells, closed, strict=True):
        if is_closed and signed_volume(shell) < 0:
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
    work = mesh.copy()
    work.merge_vertices()
    topology = _topology(work.faces)
    before = _counts(work, topology)
    before.update(vertices=int(len(mesh.vertices)), faces=int(len(mesh.faces)))
    if before["degenerate_faces"] or before["duplicate_faces"]:
        work.update_faces(work.nondegenerate_faces())
        work.update_faces(work.unique_faces())
        work.remove_unreferenced_vertices()
        topology = _topology(work.faces)

    shells: list[tuple[trimesh.Trimesh, dict]] = []
    if topology["shells"] == 1:
        shells = [(work, topology)]
    elif topology["shells"] > 1:
        for label in range(topology["shells"]):
            shell = work.submesh([np.flatnonzero(topology["labels"] == label)], append=True)
            shells.append((shell, _topology(shell.faces)))
    kept, removed = [], []
    for shell, shell_topology in shells:
        closed = _closed_topology(shell_topology)
        volume = abs(signed_volume(shell)) if closed else float(shell.bounding_box.volume)
        if volume >= options.min_shell_volume_mm3:
            kept.append((shell, shell_topology))
        else:
            removed.append(round(volume, 3))
    if not kept:
        raise RepairError(
            f"has no shell of at least {options.min_shell_volume_mm3} mm³ (largest: {max(removed, default=0)} mm³).",
            subject=subject,
            fix="check the segment, or lower the small-shell threshold.",
        )
    changed = len(kept) != 1 or kept[0][0] is not work
    for index, (shell, shell_topology) in enumerate(kept):
        if shell_topology["winding"] and _closed_topology(shell_topology):
            continue  # already a closed, consistently wound shell
        trimesh.repair.fix_winding(shell)
        if options.fill_holes and not _closed_topology(shell_topology):
            trimesh.repair.fill_holes(shell)
            trimesh.repair.fix_winding(shell)
        kept[index] = (shell, _topology(shell.faces))
        changed = True
    work = _oriented([s for s, _ in kept], [_closed_topology(t) for _, t in kept])
    if changed:
        topology = _topology(work.faces)
    boundary, non_manifold = topology["boundary"], topology["non_manifold"]
    if boundary or non_manifold or not topology["winding"]:
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
    if signed_volume(result) < 0:  # all shells inside out: turn them outwards
        result.invert()
    after = mesh_counts(result, merged=True, self_intersections=options.check_self_intersections)
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
