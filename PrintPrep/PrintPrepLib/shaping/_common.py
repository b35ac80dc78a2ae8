"""Shared helpers of the shaping operations: checked conversions to manifold3d and checked booleans.

Every operation works on `trimesh.Trimesh` in RAS millimetres. Booleans run in manifold3d, which
only accepts oriented 2-manifolds; anything else is refused here with the part's name and a fix,
and a boolean that comes back broken or empty raises instead of returning a silently wrong model.
"""

from __future__ import annotations

import numpy as np

from ..errors import BooleanError, PrintPrepError

REPAIR_FIX = "repair the model first (PrintPrepLib repair: watertight, 2-manifold, outward normals)"


def check_mesh(mesh, name: str = "model"):
    """The mesh as a non-empty trimesh.Trimesh with finite vertices, or PrintPrepError."""
    import trimesh

    if not isinstance(mesh, trimesh.Trimesh):
        raise PrintPrepError(
            f"expected a trimesh.Trimesh, got {type(mesh).__name__}",
            subject=name,
            fix="convert the model with PrintPrepLib.mesh before shaping it",
        )
    if len(mesh.faces) == 0 or len(mesh.vertices) == 0:
        raise PrintPrepError(
            "the model is empty (no triangles)", subject=name, fix="check the segment is not empty"
        )
    if not np.all(np.isfinite(mesh.vertices)):
        raise PrintPrepError("the model has non-finite vertex coordinates", subject=name, fix=REPAIR_FIX)
    return mesh


def positive(value, what: str, name: str = "model") -> float:
    """A finite, strictly positive number of millimetres (or count), or PrintPrepError."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise PrintPrepError(
            f"{what} must be a number, got {value!r}", subject=name, fix=f"give {what}"
        ) from None
    if not np.isfinite(number) or number <= 0:
        raise PrintPrepError(
            f"{what} must be greater than 0, got {value!r}", subject=name, fix=f"give a positive {what}"
        )
    return number


def unit_vector(vector, what: str, name: str = "model") -> np.ndarray:
    """A unit 3-vector, or PrintPrepError for a zero/non-finite/wrong-sized vector."""
    array = np.asarray(vector, dtype=float).reshape(-1)
    norm = float(np.linalg.norm(array)) if array.size == 3 else 0.0
    if array.size != 3 or not np.isfinite(norm) or norm < 1e-9:
        raise PrintPrepError(
            f"{what} must be a non-zero 3-vector in RAS, got {vector!r}",
            subject=name,
            fix=f"give {what} as (R, A, S)",
        )
    return array / norm


def to_manifold(mesh, name: str = "model"):
    """manifold3d.Manifold of a closed, oriented 2-manifold trimesh, or PrintPrepError naming the fault."""
    import manifold3d

    check_mesh(mesh, name)
    vertices = np.array(mesh.vertices, dtype=np.float64, order="C")  # plain, contiguous arrays
    faces = np.array(mesh.faces, dtype=np.uint64, order="C")
    solid = manifold3d.Manifold(manifold3d.Mesh64(vert_properties=vertices, tri_verts=faces))
    status = solid.status()
    if status != manifold3d.Error.NoError or solid.is_empty():
        reason = (
            "not a closed, oriented 2-manifold"
            if status == manifold3d.Error.NotManifold
            else str(status.name)
        )
        raise PrintPrepError(
            f"the mesh cannot be used for booleans: {reason} "
            f"({len(mesh.faces)} triangles, watertight={bool(mesh.is_watertight)})",
            subject=name,
            fix=REPAIR_FIX,
        )
    if solid.volume() <= 0:
        raise PrintPrepError(
            "the mesh encloses no volume (inside-out or flat)",
            subject=name,
            fix=REPAIR_FIX + ", with outward normals",
        )
    return solid


def from_manifold(solid):
    """trimesh.Trimesh of a manifold3d.Manifold (vertices shared, faces as manifold3d wrote them)."""
    import trimesh

    out = solid.to_mesh64()
    vertices = np.array(np.asarray(out.vert_properties)[:, :3], dtype=np.float64, order="C")
    faces = np.asarray(out.tri_verts, dtype=np.int64)
    # process=False: keep manifold3d's topology (merging coincident vertices could pinch two
    # sheets that only touch into a non-manifold edge).
    return trimesh.Trimesh(vertices=vertices, faces=faces, process=False)


def checked(solid, operation: str, name: str = "model", *, allow_empty: bool = False):
    """The result of a boolean, or BooleanError when manifold3d reports an error or an empty result."""
    import manifold3d

    status = solid.status()
    if status != manifold3d.Error.NoError:
        raise BooleanError(f"{operation} failed in manifold3d ({status.name})", subject=name, fix=REPAIR_FIX)
    if not allow_empty and (solid.is_empty() or solid.volume() <= 0):
        raise BooleanError(
            f"{operation} gave an empty model",
            subject=name,
            fix="check the parameters: the tool geometry must overlap the model and leave material",
        )
    return solid


def cylinder_between(start, end, diameter: float, segments: int = 32):
    """A manifold3d cylinder of `diameter` mm whose axis runs from `start` to `end` (RAS mm)."""
    import manifold3d

    start = np.asarray(start, dtype=float)
    end = np.asarray(end, dtype=float)
    axis = end - start
    length = float(np.linalg.norm(axis))
    if length <= 1e-9:
        raise PrintPrepError("a cylinder needs two distinct end points", fix="report this as a bug")
    cylinder = manifold3d.Manifold.cylinder(length, diameter / 2.0, -1.0, segments, False)
    rotation = rotation_from_z(axis / length)
    matrix = np.zeros((3, 4))
    matrix[:, :3] = rotation
    matrix[:, 3] = start
    return cylinder.transform(matrix)


def rotation_from_z(direction) -> np.ndarray:
    """3x3 rotation taking +z to the unit vector `direction`."""
    d = np.asarray(direction, dtype=float)
    d = d / np.linalg.norm(d)
    z = np.array([0.0, 0.0, 1.0])
    c = float(np.dot(z, d))
    if c > 1 - 1e-12:
        return np.eye(3)
    if c < -1 + 1e-12:
        return np.diag([1.0, -1.0, -1.0])
    v = np.cross(z, d)
    s = np.linalg.norm(v)
    k = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + k + k @ k * ((1 - c) / s**2)


def shells(mesh):
    """Connected surface shells (face connectivity) of a mesh, each as a trimesh."""
    return mesh.split(only_watertight=False)


def to_polydata(mesh):
    """vtkPolyData of a trimesh (points and triangles; RAS mm)."""
    from vtkmodules.util.numpy_support import numpy_to_vtk, numpy_to_vtkIdTypeArray
    from vtkmodules.vtkCommonCore import vtkPoints
    from vtkmodules.vtkCommonDataModel import vtkCellArray, vtkPolyData

    points = vtkPoints()
    points.SetData(numpy_to_vtk(np.ascontiguousarray(mesh.vertices, dtype=np.float64), deep=True))
    offsets = np.arange(0, 3 * len(mesh.faces) + 1, 3, dtype=np.int64)
    cells = vtkCellArray()
    cells.SetData(
        numpy_to_vtkIdTypeArray(offsets, deep=True),
        numpy_to_vtkIdTypeArray(np.ascontiguousarray(mesh.faces, dtype=np.int64).ravel(), deep=True),
    )
    polydata = vtkPolyData()
    polydata.SetPoints(points)
    polydata.SetPolys(cells)
    return polydata


def solid_bodies(solid) -> list:
    """The separate solid bodies of a manifold (its components of positive volume).

    manifold3d's decompose() also returns a sealed void inside a body as its own component,
    with negative volume: it belongs to the body around it and is not counted.
    """
    return [body for body in solid.decompose() if body.volume() > 0]
