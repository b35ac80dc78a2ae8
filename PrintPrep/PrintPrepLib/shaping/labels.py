"""Labels: embossed or engraved text (case number, L/R side, part name) on a plane or a flat region.

Text geometry: VTK's vector font (vtkVectorText, built in, no font files), its filled triangles
merged into a 2D cross-section and extruded by manifold3d (always a closed 2-manifold), then
added (emboss) or subtracted (engrave) with manifold3d booleans.

Placement: a plane given as origin + outward normal in RAS (a markups plane), or found
automatically: the largest flat region of the surface that holds the text. The text reads left to
right and upright for a viewer outside the model looking at the plane (never mirrored): its
reading direction is up × normal, with `up` the patient's superior direction projected onto the
plane (anterior when the plane faces up or down) unless given. On a curved surface the text is
rooted into the body to the lowest surface point under it and rises `depth` mm above the highest.
"""

from __future__ import annotations

import time

import numpy as np

from ..errors import PrintPrepError
from ._common import checked, from_manifold, positive, to_manifold, to_polydata, unit_vector

#: Flat-region search: neighbouring triangles whose normals differ by less than this are one region.
FLAT_ANGLE_DEG = 5.0


def text_cross_section(text: str, height_mm: float):
    """manifold3d.CrossSection of `text` in the vector font, `height_mm` tall, centred on (0, 0)."""
    import manifold3d
    from vtkmodules.util.numpy_support import vtk_to_numpy
    from vtkmodules.vtkRenderingFreeType import vtkVectorText

    source = vtkVectorText()
    source.SetText(text)
    source.Update()
    polydata = source.GetOutput()
    if polydata.GetNumberOfPolys() == 0:
        raise PrintPrepError(f"the label {text!r} has no printable characters", fix="give letters or digits")
    points = vtk_to_numpy(polydata.GetPoints().GetData())[:, :2].astype(float)
    cells = vtk_to_numpy(polydata.GetPolys().GetConnectivityArray()).reshape(-1, 3)
    low, high = points.min(0), points.max(0)
    scale = height_mm / (high[1] - low[1])
    points = (points - (low + high) / 2) * scale
    triangles = points[cells]
    edge1 = triangles[:, 1] - triangles[:, 0]
    edge2 = triangles[:, 2] - triangles[:, 0]
    doubled_area = edge1[:, 0] * edge2[:, 1] - edge1[:, 1] * edge2[:, 0]
    triangles[doubled_area < 0] = triangles[doubled_area < 0][:, ::-1]  # all counter-clockwise
    triangles = triangles[np.abs(doubled_area) > 1e-12]
    return manifold3d.CrossSection([tri for tri in triangles], manifold3d.FillRule.Positive)


def plane_axes(normal, up=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(reading direction, text up, normal): a right-handed frame seen from outside the plane."""
    n = unit_vector(normal, "the label plane's normal")
    if up is None:
        up = np.array([0.0, 0.0, 1.0]) if abs(n[2]) < 0.9 else np.array([0.0, 1.0, 0.0])
    up = unit_vector(up, "the label's up direction")
    x = np.cross(up, n)
    if np.linalg.norm(x) < 1e-6:
        raise PrintPrepError(
            "the label's up direction is parallel to the plane's normal", fix="give another up direction"
        )
    x /= np.linalg.norm(x)
    return x, np.cross(n, x), n


def find_flat_region(mesh, width_mm: float, height_mm: float, up=None, down=None):
    """(origin, normal) of the largest flat surface region that holds a width × height label, or None.

    Regions facing `down` (within 45°, the side on the build plate) are passed over.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    adjacency = mesh.face_adjacency
    flat = mesh.face_adjacency_angles < np.radians(FLAT_ANGLE_DEG)
    pairs = adjacency[flat]
    count = len(mesh.faces)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(count, count))
    _, labels = connected_components(graph, directed=False)
    area = np.bincount(labels, weights=mesh.area_faces)
    for label in np.argsort(-area):
        if area[label] < width_mm * height_mm:
            break
        members = np.flatnonzero(labels == label)
        weights = mesh.area_faces[members]
        normal = (mesh.face_normals[members] * weights[:, None]).sum(0)
        normal /= np.linalg.norm(normal)
        if down is not None and float(normal @ down) > np.cos(np.radians(45)):
            continue
        if np.min(mesh.face_normals[members] @ normal) < np.cos(np.radians(2 * FLAT_ANGLE_DEG)):
            continue  # a smoothly curved region, not a flat one
        centre = (mesh.triangles_center[members] * weights[:, None]).sum(0) / weights.sum()
        x, y, _ = plane_axes(normal, up)
        corners = mesh.vertices[np.unique(mesh.faces[members])] - centre
        u, v = corners @ x, corners @ y
        # The text, centred on the region's centre, must lie inside the region's extent.
        if min(-u.min(), u.max()) >= width_mm / 2 and min(-v.min(), v.max()) >= height_mm / 2:
            nearest = members[np.argmin(np.linalg.norm(mesh.triangles_center[members] - centre, axis=1))]
            origin = centre - normal * float((centre - mesh.triangles_center[nearest]) @ normal)
            return origin, normal
    return None


def find_flattest_site(mesh, section, up=None, down=None, candidates: int = 300):
    """(origin, normal, relief mm) of the sampled surface site where the label's outline meets the
    surface with the least relief (for curved anatomy without flat faces), or None."""
    rng = np.random.default_rng(0)
    normals = mesh.face_normals
    allowed = np.ones(len(mesh.faces), dtype=bool)
    if down is not None:
        allowed &= normals @ down <= np.cos(np.radians(45))
    if not allowed.any():
        return None
    weights = mesh.area_faces * allowed
    picks = rng.choice(
        len(mesh.faces), size=min(candidates, int(allowed.sum())), replace=False, p=weights / weights.sum()
    )
    outline = np.vstack([np.vstack(section.to_polygons()), [[0.0, 0.0]]])
    (xmin, ymin), (xmax, ymax) = np.asarray(section.bounds()).reshape(2, 2)
    radius = max(xmax - xmin, ymax - ymin) / 2
    reach = float(np.linalg.norm(np.ptp(mesh.bounds, axis=0))) + 1.0
    locator = _locator(mesh)
    best = None
    for face in picks:
        centre = mesh.triangles_center[face]
        near = np.linalg.norm(mesh.triangles_center - centre, axis=1) <= radius
        normal = (normals[near] * mesh.area_faces[near, None]).sum(0)
        if np.linalg.norm(normal) < 1e-9:
            continue
        normal /= np.linalg.norm(normal)
        try:
            x, y, n = plane_axes(normal, up)
        except PrintPrepError:
            continue
        world = centre + outline[:, :1] * x + outline[:, 1:] * y
        offsets = _surface_offsets(mesh, world, n, reach, locator)
        if np.isnan(offsets).any():
            continue
        relief = float(offsets.max() - offsets.min())
        if best is None or relief < best[2]:
            best = (centre, normal, relief)
    return best


def _locator(mesh):
    from vtkmodules.vtkCommonDataModel import vtkStaticCellLocator

    locator = vtkStaticCellLocator()
    locator.SetDataSet(to_polydata(mesh))
    locator.BuildLocator()
    return locator


def _surface_offsets(mesh, points, normal, reach, locator=None):
    """Signed height (mm, along normal) of the surface under each point, NaN where the line misses."""
    from vtkmodules.vtkCommonCore import reference

    locator = locator or _locator(mesh)
    t = reference(0.0)
    x = [0.0, 0.0, 0.0]
    pcoords = [0.0, 0.0, 0.0]
    sub_id = reference(0)
    cell_id = reference(0)
    out = np.full(len(points), np.nan)
    for index, point in enumerate(points):
        # From outside, along -normal: the first surface met is the one the label sits on.
        if locator.IntersectWithLine(
            point + normal * reach, point - normal * reach, 1e-9, t, x, pcoords, sub_id, cell_id
        ):
            out[index] = reach - 2 * reach * float(t)
    return out


def add_label(
    mesh,
    text: str,
    *,
    origin=None,
    normal=None,
    up=None,
    height_mm: float = 5.0,
    depth_mm: float = 0.8,
    mode: str = "emboss",
    down=(0.0, 0.0, -1.0),
    name: str = "model",
):
    """Emboss or engrave `text` on the model.

    origin, normal: the plane in RAS mm (normal pointing out of the model), e.g. from a markups
    plane; both None to place it on the largest flat region that holds it and does not face
    `down` (the build plate), or, on curved anatomy without one, on the sampled surface site
    where the surface under the text varies least (at most the depth or half the
    text height). up: the text's up
    direction (default superior, or anterior on planes facing up/down). height_mm: text height;
    depth_mm: how far it stands out (emboss) or cuts in (engrave).

    Returns (watertight trimesh, report with the plane, the text's reading and up directions,
    its area (mm²), the expected and actual volume change (mm³) and the time taken).
    """
    started = time.perf_counter()
    if not isinstance(text, str) or not text.strip():
        raise PrintPrepError(
            "the label text is empty", subject=name, fix="give the text to print (case number, side, part)"
        )
    if mode not in ("emboss", "engrave"):
        raise PrintPrepError(
            f"label mode must be 'emboss' or 'engrave', got {mode!r}",
            subject=name,
            fix="choose emboss or engrave",
        )
    height = positive(height_mm, "the label height (mm)", name)
    depth = positive(depth_mm, "the label depth (mm)", name)
    solid = to_manifold(mesh, name)
    section = text_cross_section(text, height)
    (xmin, ymin), (xmax, ymax) = np.asarray(section.bounds()).reshape(2, 2)
    placed = "given plane"
    if origin is None and normal is None:
        down_vector = unit_vector(down, "the down vector", name)
        found = find_flat_region(mesh, xmax - xmin, ymax - ymin, up, down_vector)
        placed = "largest flat region"
        if found is None:
            site = find_flattest_site(mesh, section, up, down_vector)
            if site is not None and site[2] <= max(depth, (ymax - ymin) / 2):
                found = site[:2]
                placed = "flattest curved site"
        if found is None:
            raise PrintPrepError(
                f"no flat or gently curved region of the model holds a {xmax - xmin:.1f} × {ymax - ymin:.1f} mm label",
                subject=name,
                fix="give the label plane (origin and normal), or a smaller label height",
            )
        origin, normal = found
    elif origin is None or normal is None:
        raise PrintPrepError(
            "a label plane needs both an origin and a normal",
            subject=name,
            fix="give both, or neither for automatic placement",
        )
    origin = np.asarray(origin, dtype=float).reshape(3)
    x, y, n = plane_axes(normal, up)
    # Surface height under the glyph outline points (and the centre).
    outline = np.vstack([np.vstack(section.to_polygons()), [[0.0, 0.0]]])
    world = origin + outline[:, :1] * x + outline[:, 1:] * y
    reach = float(np.linalg.norm(np.ptp(mesh.bounds, axis=0))) + 1.0
    offsets = _surface_offsets(mesh, world, n, reach)
    if np.isnan(offsets).any():
        raise PrintPrepError(
            f"the label runs off the model at this place ({int(np.isnan(offsets).sum())} of {len(offsets)} outline points miss it)",
            subject=name,
            fix="move the label plane onto the model, or give a smaller label height",
        )
    low, high = float(offsets.min()), float(offsets.max())
    if mode == "emboss":
        bottom, top = low - max(depth, 0.5), high + depth
    else:
        bottom, top = low - depth, high + max(depth, 1.0)
    import manifold3d

    tool = manifold3d.Manifold.extrude(section, top - bottom)
    frame = np.zeros((3, 4))
    frame[:, 0], frame[:, 1], frame[:, 2] = x, y, n
    frame[:, 3] = origin + n * bottom
    tool = tool.transform(frame)
    before = solid.volume()
    result = checked(solid + tool if mode == "emboss" else solid - tool, f"{mode}ing the label", name)
    after = result.volume()
    area = section.area()
    out = from_manifold(result)
    if not out.is_watertight:
        raise PrintPrepError(
            "the labelled model is not watertight", subject=name, fix="repair the model and retry"
        )
    report = {
        "text": text,
        "mode": mode,
        "placement": placed,
        "origin_ras_mm": np.round(origin, 3).tolist(),
        "normal_ras": np.round(n, 4).tolist(),
        "reading_direction_ras": np.round(x, 4).tolist(),
        "up_ras": np.round(y, 4).tolist(),
        "height_mm": height,
        "width_mm": round(float(xmax - xmin), 3),
        "depth_mm": depth,
        "text_area_mm2": round(area, 3),
        "surface_relief_mm": round(high - low, 3),
        "expected_volume_change_mm3": round(area * depth * (1 if mode == "emboss" else -1), 3),
        "volume_change_mm3": round(after - before, 3),
        "watertight": True,
        "elapsed_s": round(time.perf_counter() - started, 3),
    }
    return out, report
