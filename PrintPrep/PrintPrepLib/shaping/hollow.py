"""Hollowing with a wall thickness in mm, and drain holes at the lowest points.

Method: the cavity is the set of points deeper than the wall inside the model. Depth is a
distance field on a voxel grid: a Euclidean distance transform of the voxelised model
(scipy) gives it everywhere to within a voxel, and in the band around the wall depth it is
replaced by the exact distance to the triangles (nearest surface samples, then the exact
point-triangle distance of their faces). Marching cubes (VTK flying edges) of that field at the
wall depth gives the cavity surface with sub-voxel accuracy; manifold3d subtracts it from the
model. Drain holes are cylinders along the local outward normal at the lowest points for the
chosen build orientation (the "down" vector), cut through the wall; the result is checked to
have no closed cavity left.
"""

from __future__ import annotations

import time

import numpy as np

from ..errors import PrintPrepError
from ._common import (
    check_mesh,
    checked,
    cylinder_between,
    from_manifold,
    positive,
    shells,
    to_manifold,
    to_polydata,
    unit_vector,
)

#: At most this many grid points for the distance field (about 100 MB of float32 work arrays).
MAX_GRID_POINTS = 12_000_000


def _grid(bounds: np.ndarray, spacing: float, pad: int):
    origin = bounds[0] - pad * spacing
    dims = np.ceil((bounds[1] - bounds[0]) / spacing).astype(int) + 2 * pad + 1
    return origin, dims


def _inside_mask(mesh, origin, spacing, dims) -> np.ndarray:
    """Boolean (z, y, x) array: grid points inside the closed mesh (VTK polydata stencil)."""
    from vtkmodules.util.numpy_support import vtk_to_numpy
    from vtkmodules.vtkCommonCore import VTK_UNSIGNED_CHAR
    from vtkmodules.vtkCommonDataModel import vtkImageData
    from vtkmodules.vtkImagingStencil import vtkImageStencil, vtkPolyDataToImageStencil

    image = vtkImageData()
    image.SetOrigin(*origin)
    image.SetSpacing(spacing, spacing, spacing)
    image.SetDimensions(*[int(d) for d in dims])
    image.AllocateScalars(VTK_UNSIGNED_CHAR, 1)
    image.GetPointData().GetScalars().Fill(1)
    stencil = vtkPolyDataToImageStencil()
    stencil.SetInputData(to_polydata(mesh))
    stencil.SetOutputOrigin(*origin)
    stencil.SetOutputSpacing(spacing, spacing, spacing)
    stencil.SetOutputWholeExtent(image.GetExtent())
    to_image = vtkImageStencil()
    to_image.SetInputData(image)
    to_image.SetStencilConnection(stencil.GetOutputPort())
    to_image.ReverseStencilOff()
    to_image.SetBackgroundValue(0)
    to_image.Update()
    values = vtk_to_numpy(to_image.GetOutput().GetPointData().GetScalars())
    return values.reshape(dims[2], dims[1], dims[0]) > 0


def surface_distance(mesh, points: np.ndarray, sample_spacing: float, neighbours: int = 4) -> np.ndarray:
    """Unsigned distance (mm) from points to the mesh's triangles.

    The `neighbours` nearest of surface samples (about one per sample_spacing², and every
    triangle's centre) name candidate triangles; the exact point-triangle distance to each is
    taken and the least kept. Even when the nearest triangle is missed, the error is at most
    sample_spacing² / (2 × distance).
    """
    import trimesh
    from scipy.spatial import cKDTree

    if len(points) == 0:
        return np.zeros(0)
    count = int(min(mesh.area / sample_spacing**2, 3_000_000))
    samples, face_index = trimesh.sample.sample_surface(mesh, count, seed=0)
    samples = np.vstack([samples, mesh.triangles_center])
    face_index = np.concatenate([face_index, np.arange(len(mesh.faces))])
    tree = cKDTree(samples)
    distance, nearest = tree.query(points, k=neighbours, workers=-1)
    best = distance[:, 0].copy()
    triangles = mesh.triangles
    for column in range(neighbours):
        faces = face_index[nearest[:, column]]
        closest = trimesh.triangles.closest_point(triangles[faces], points)
        best = np.minimum(best, np.linalg.norm(closest - points, axis=1))
    return best


def _cavity_surface(mesh, wall: float, spacing: float):
    """The closed surface `wall` mm inside the mesh as a trimesh, or None when no point is that deep."""
    import trimesh
    from scipy import ndimage
    from vtkmodules.util.numpy_support import numpy_to_vtk, vtk_to_numpy
    from vtkmodules.vtkCommonDataModel import vtkImageData
    from vtkmodules.vtkFiltersCore import vtkFlyingEdges3D

    bounds = np.asarray(mesh.bounds, dtype=float)
    origin, dims = _grid(bounds, spacing, pad=3)
    inside = _inside_mask(mesh, origin, spacing, dims)
    if not inside.any():
        return None
    depth = ndimage.distance_transform_edt(inside, sampling=spacing).astype(np.float64)
    # The transform measures to the nearest outside grid point: the surface lies between, so the
    # true depth is within [depth - sqrt(3) spacing, depth]. Replace it by the exact distance in
    # the band where the cavity surface can be.
    band = inside & (depth > wall - 0.5 * spacing) & (depth < wall + 2.5 * spacing)
    zyx = np.argwhere(band)
    points = origin + zyx[:, ::-1] * spacing
    depth[band] = surface_distance(mesh, points, sample_spacing=spacing)
    field = np.where(inside, depth - wall, -wall - spacing)
    field[field == 0] = 1e-9  # no grid point exactly on the level: keeps marching cubes 2-manifold
    if not (field > 0).any():
        return None
    image = vtkImageData()
    image.SetOrigin(*origin)
    image.SetSpacing(spacing, spacing, spacing)
    image.SetDimensions(*[int(d) for d in dims])
    image.GetPointData().SetScalars(numpy_to_vtk(field.ravel(), deep=True))
    contour = vtkFlyingEdges3D()
    contour.SetInputData(image)
    contour.SetValue(0, 0.0)
    contour.ComputeNormalsOff()
    contour.ComputeGradientsOff()
    contour.Update()
    polydata = contour.GetOutput()
    if polydata.GetNumberOfPolys() == 0:
        return None
    vertices = vtk_to_numpy(polydata.GetPoints().GetData()).astype(np.float64)
    faces = vtk_to_numpy(polydata.GetPolys().GetConnectivityArray()).reshape(-1, 3)
    cavity = trimesh.Trimesh(vertices=vertices, faces=faces, process=True)
    cavity.update_faces(cavity.nondegenerate_faces())
    cavity.remove_unreferenced_vertices()
    if cavity.volume < 0:
        cavity.invert()
    return cavity


def _vertex_normals_near(mesh, point, radius):
    """Area-weighted outward normal of the faces within `radius` of point (the local wall direction)."""
    near = np.linalg.norm(mesh.triangles_center - point, axis=1) <= radius
    if not near.any():
        near = np.argmin(np.linalg.norm(mesh.triangles_center - point, axis=1))
        return mesh.face_normals[near]
    normal = (mesh.face_normals[near] * mesh.area_faces[near, None]).sum(axis=0)
    return normal / np.linalg.norm(normal)


def _locator(mesh):
    from vtkmodules.vtkCommonDataModel import vtkStaticCellLocator

    locator = vtkStaticCellLocator()
    locator.SetDataSet(to_polydata(mesh))
    locator.BuildLocator()
    return locator


def _closest_point(locator, point) -> np.ndarray:
    from vtkmodules.vtkCommonCore import reference

    closest = [0.0, 0.0, 0.0]
    locator.FindClosestPoint(
        np.asarray(point, dtype=float), closest, reference(0), reference(0), reference(0.0)
    )
    return np.asarray(closest)


def lowest_points(mesh, down, count: int, spacing: float) -> list[np.ndarray]:
    """The `count` lowest vertices along `down`, each at least `spacing` mm from the ones before."""
    height = mesh.vertices @ down  # larger is lower
    order = np.argsort(-height)
    chosen: list[np.ndarray] = []
    for index in order:
        point = mesh.vertices[index]
        if all(np.linalg.norm(point - other) >= spacing for other in chosen):
            chosen.append(point)
            if len(chosen) == count:
                break
    return chosen


def hollow(
    mesh,
    wall_mm: float,
    *,
    drain_holes: int = 0,
    drain_diameter_mm: float = 3.0,
    down=(0.0, 0.0, -1.0),
    hole_spacing_mm: float | None = None,
    voxel_mm: float | None = None,
    min_cavity_mm3: float = 500.0,
    name: str = "model",
):
    """Hollow a closed model to a wall of `wall_mm` mm, with optional drain holes.

    drain_holes: how many holes (0 for none); drain_diameter_mm their diameter; down the build
    direction in RAS. The cavity's lowest points along `down` get the holes (at least one per
    separate pocket of the cavity, the rest to the largest pockets, at least hole_spacing_mm
    apart, default 4 diameters), each cut to the nearest point of the outer surface. Cavity
    pockets under min_cavity_mm3 are left solid (tiny pockets cannot be drained). voxel_mm:
    the distance-field grid (default a third of the wall, coarser only to stay under
    MAX_GRID_POINTS).

    Returns (hollowed trimesh, report) with volumes in mm³ and mL, the holes' centres (RAS mm)
    and axes, the number of closed cavities left (0 when drained) and the time taken.
    """
    started = time.perf_counter()
    check_mesh(mesh, name)
    wall = positive(wall_mm, "the wall thickness (mm)", name)
    down = unit_vector(down, "the down vector", name)
    holes = int(drain_holes)
    if holes < 0:
        raise PrintPrepError(
            f"the number of drain holes must be 0 or more, got {drain_holes}",
            subject=name,
            fix="give 0 or more",
        )
    diameter = (
        positive(drain_diameter_mm, "the drain hole diameter (mm)", name)
        if holes
        else float(drain_diameter_mm)
    )
    spacing_holes = (
        4.0 * diameter
        if hole_spacing_mm is None
        else positive(hole_spacing_mm, "the hole spacing (mm)", name)
    )
    outer = to_manifold(mesh, name)
    extent = np.ptp(np.asarray(mesh.bounds), axis=0)
    if voxel_mm is None:
        spacing = max(wall / 3.0, float(np.prod(extent + 2 * wall) / MAX_GRID_POINTS) ** (1 / 3))
    else:
        spacing = positive(voxel_mm, "the voxel size (mm)", name)
        if np.prod(np.ceil(extent / spacing) + 7) > MAX_GRID_POINTS:
            raise PrintPrepError(
                f"a {spacing} mm grid over {extent.round(1).tolist()} mm is more than {MAX_GRID_POINTS} points",
                subject=name,
                fix="give a larger voxel size or leave it to the default",
            )
    cavity = _cavity_surface(mesh, wall, spacing)
    if cavity is None:
        raise PrintPrepError(
            f"no point of the model is deeper than the wall of {wall} mm, so there is nothing to hollow",
            subject=name,
            fix="give a thinner wall, or print this part solid",
        )
    inner = to_manifold(cavity, f"{name} cavity")
    pockets = sorted(inner.decompose(), key=lambda pocket: -pocket.volume())
    smallest = positive(min_cavity_mm3, "the least cavity volume (mm³)", name)
    kept = [pocket for pocket in pockets if pocket.volume() >= smallest]
    if not kept:
        raise PrintPrepError(
            f"the cavity would be only pockets under {smallest} mm³, so there is nothing worth hollowing",
            subject=name,
            fix="give a thinner wall, or print this part solid",
        )
    if len(kept) < len(pockets):
        import manifold3d

        inner = manifold3d.Manifold.compose(kept)
    shell = checked(outer - inner, "hollowing (model minus cavity)", name)
    report = {
        "wall_thickness_mm": wall,
        "voxel_mm": round(spacing, 4),
        "volume_before_mm3": round(outer.volume(), 3),
        "cavity_volume_mm3": round(inner.volume(), 3),
        "volume_after_mm3": round(shell.volume(), 3),
        "cavity_pockets": len(kept),
        "small_pockets_left_solid": len(pockets) - len(kept),
        "drain_holes": [],
    }
    if holes:
        if holes < len(kept):
            raise PrintPrepError(
                f"the cavity comes in {len(kept)} separate pockets, so {holes} drain hole(s) cannot drain it",
                subject=name,
                fix=f"give at least {len(kept)} drain holes, a thinner wall, or a larger min_cavity_mm3",
            )
        # One hole per pocket, the rest to the largest pockets in turn.
        share = [1] * len(kept)
        for extra in range(holes - len(kept)):
            share[extra % len(kept)] += 1
        locator = _locator(mesh)
        tools = []
        for pocket, count in zip(kept, share, strict=True):
            pocket_mesh = from_manifold(pocket)
            points = lowest_points(pocket_mesh, down, count, spacing_holes)
            if len(points) < count:
                raise PrintPrepError(
                    f"only {len(points)} of {count} drain holes fit {spacing_holes} mm apart in one pocket",
                    subject=name,
                    fix="give fewer holes or a smaller spacing",
                )
            for inside_point in points:
                outside_point = _closest_point(locator, inside_point)
                axis = inside_point - outside_point
                if np.linalg.norm(axis) < 1e-6:
                    axis = -_vertex_normals_near(mesh, outside_point, max(diameter, 1.0))
                axis = axis / np.linalg.norm(axis)
                start = outside_point - axis * (1.0 + diameter / 2)
                end = inside_point + axis * (spacing + diameter / 2)
                tools.append(cylinder_between(start, end, diameter))
                report["drain_holes"].append(
                    {
                        "centre_ras_mm": np.round(outside_point, 3).tolist(),
                        "axis_ras": np.round(axis, 4).tolist(),
                        "diameter_mm": diameter,
                    }
                )
        import manifold3d

        shell = checked(
            shell - manifold3d.Manifold.batch_boolean(tools, manifold3d.OpType.Add),
            "cutting drain holes",
            name,
        )
    result = from_manifold(shell)
    closed_cavities = sum(1 for part in shells(result) if part.volume < 0)
    report["volume_after_mm3"] = round(shell.volume(), 3)
    report["volume_after_ml"] = round(shell.volume() / 1000.0, 4)
    report["material_saved_percent"] = round(100.0 * (1 - shell.volume() / outer.volume()), 2)
    report["closed_cavities"] = closed_cavities
    report["watertight"] = bool(result.is_watertight)
    if holes and closed_cavities:
        raise PrintPrepError(
            f"{closed_cavities} cavity(ies) stay closed after {holes} drain hole(s): resin or powder would be trapped",
            subject=name,
            fix="add holes, give a larger drain diameter, or choose another down direction",
        )
    report["elapsed_s"] = round(time.perf_counter() - started, 3)
    return result, report
