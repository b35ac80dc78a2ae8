"""Deformable resection surfaces: a thin-plate spline through a grid of control points.

The control points are a `vtkMRMLMarkupsFiducialNode` with rows × columns points (at least
4 × 4), stored row by row and labelled "r,c"; the surface is a `vtkMRMLModelNode` that follows
them (the markups node's PointModifiedEvent is observed). Both live in the scene, so a saved
scene carries the surface and `DeformableSurface.from_node` rebuilds it.

Geometry. The surface is a *height field* over a base frame taken from the four corner control
points: origin at their mean, u along the columns, v along the rows, w = u × v (the surface's
normal, which decides what "positive side" means). Its height above the base plane is the
thin-plate spline that interpolates the control points' heights at their (u, v) positions, so
the surface passes through every control point and bends as little as possible between them.
A height field never folds over itself, and "which side of the surface is this voxel on" is
exact and cheap: compare the voxel's w with the spline's height at its (u, v). The price: the
surface cannot curl back over itself (overhangs), which a resection surface does not need.
Moving an interior control point leaves the frame alone; moving a corner tilts it.

The surface covers the rectangle spanned by its control points in (u, v) (its *footprint*);
beyond it the surface does not exist, which is why it must extend past the organ.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import slicer
import vtk
from scipy.interpolate import RBFInterpolator
from vtk.util.numpy_support import numpy_to_vtk

from VSPCoreLib.errors import InputDataError

from .geometry import in_plane_axes

ROLE_ATTRIBUTE = "SlicerVSP.Role"
SURFACE_ROLE = "resection surface control points"
ROWS_ATTRIBUTE = "SlicerVSP.SurfaceRows"
COLUMNS_ATTRIBUTE = "SlicerVSP.SurfaceColumns"
MODEL_REFERENCE = "SlicerVSP.SurfaceModel"
MIN_GRID = 4


class ThinPlateSpline:
    """z = f(x, y): the 2-D thin-plate spline through scattered points (optionally smoothed).

    f(p) = a0 + a1·x + a2·y + Σ w_i U(|p − p_i|), U(r) = r² log r: scipy's `RBFInterpolator`
    (kernel "thin_plate_spline", degree 1), which gives the same heights as a hand-written solve
    (within 1e-10 mm, Testing/test_exact_grids.py) about three times faster. Coordinates are
    scaled to about unit size first, so that the linear system is well conditioned whatever the
    units and `smoothing` means the same at any size. `smoothing` > 0 trades exact interpolation
    for a smoother surface (and keeps the system solvable when two control points are dragged
    onto the same (u, v)).
    """

    def __init__(self, xy: np.ndarray, z: np.ndarray, smoothing: float = 0.0):
        xy = np.asarray(xy, float).reshape(-1, 2)
        z = np.asarray(z, float).ravel()
        if len(xy) < 3 or len(xy) != len(z):
            raise ValueError("a thin-plate spline needs at least 3 points with one height each")
        self._centre = xy.mean(axis=0)
        self._scale = float(max(np.ptp(xy, axis=0).max(), 1e-9))
        self._spline = RBFInterpolator(
            (xy - self._centre) / self._scale,
            z,
            kernel="thin_plate_spline",
            smoothing=float(smoothing),
            degree=1,
        )

    def __call__(self, xy: np.ndarray) -> np.ndarray:
        xy = (np.asarray(xy, float).reshape(-1, 2) - self._centre) / self._scale
        if len(xy) == 0:
            return np.zeros(0)
        return self._spline(xy)


@dataclass(frozen=True)
class HeightField:
    """A surface w = h(u, v) over a rectangle of a base frame, sampled on a regular raster.

    `heights[b, a]` is h at (u_range[0] + a·step, v_range[0] + b·step); between samples h is
    bilinear. The raster step is fine (the working grid's spacing) so that the bilinear surface
    and the spline differ by far less than a voxel.
    """

    origin: np.ndarray
    u: np.ndarray
    v: np.ndarray
    w: np.ndarray
    u_range: tuple[float, float]
    v_range: tuple[float, float]
    step_mm: float
    heights: np.ndarray

    def local(self, points_ras: np.ndarray) -> np.ndarray:
        """(N, 3) coordinates (u, v, w) of RAS points in the base frame."""
        return (np.asarray(points_ras, float) - self.origin) @ np.column_stack([self.u, self.v, self.w])

    def covers(self, uv: np.ndarray) -> np.ndarray:
        return (
            (uv[:, 0] >= self.u_range[0])
            & (uv[:, 0] <= self.u_range[1])
            & (uv[:, 1] >= self.v_range[0])
            & (uv[:, 1] <= self.v_range[1])
        )

    def raster_lookup(self, uv: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Where (N, 2) positions fall on the raster: flat cell index and the two fractions.

        Positions beyond the footprint take its edge. Depends only on the footprint and the
        step, so a caller may keep it while control points move inside the footprint.
        """
        nv, nu = self.heights.shape
        a = np.clip((uv[:, 0] - self.u_range[0]) / self.step_mm, 0.0, nu - 1.000001)
        b = np.clip((uv[:, 1] - self.v_range[0]) / self.step_mm, 0.0, nv - 1.000001)
        a0 = a.astype(np.int32)
        b0 = b.astype(np.int32)
        return b0 * nu + a0, (a - a0).astype(np.float32), (b - b0).astype(np.float32)

    def raster_key(self) -> tuple:
        return (*self.u_range, *self.v_range, self.step_mm, self.heights.shape)

    def height_from_lookup(self, index: np.ndarray, fa: np.ndarray, fb: np.ndarray) -> np.ndarray:
        """Bilinear height from `raster_lookup`'s result."""
        nu = self.heights.shape[1]
        flat = self.heights.ravel().astype(np.float32, copy=False)
        h00 = flat[index]
        h01 = flat[index + 1]
        h10 = flat[index + nu]
        h11 = flat[index + nu + 1]
        low = h00 + (h01 - h00) * fa
        return low + ((h10 + (h11 - h10) * fa) - low) * fb

    def height_at(self, uv: np.ndarray) -> np.ndarray:
        """Bilinear height at (N, 2) positions; positions beyond the footprint take its edge."""
        return self.height_from_lookup(*self.raster_lookup(uv)).astype(float)

    def side_mm(self, local: np.ndarray) -> np.ndarray:
        """w − h(u, v) for (N, 3) local coordinates: > 0 on the normal's (positive) side."""
        return local[:, 2] - self.height_at(local[:, :2])

    def polydata(self, step_mm: float | None = None) -> vtk.vtkPolyData:
        """The surface as a triangulated mesh (RAS), every `step_mm` in u and v."""
        step_mm = float(step_mm or self.step_mm)
        nu = max(int(np.ceil((self.u_range[1] - self.u_range[0]) / step_mm)) + 1, 2)
        nv = max(int(np.ceil((self.v_range[1] - self.v_range[0]) / step_mm)) + 1, 2)
        uu, vv = np.meshgrid(np.linspace(*self.u_range, nu), np.linspace(*self.v_range, nv))
        uv = np.column_stack([uu.ravel(), vv.ravel()])
        h = self.height_at(uv)
        points = self.origin + uv[:, :1] * self.u + uv[:, 1:] * self.v + h[:, None] * self.w
        return _grid_mesh(points, nu, nv)


def _grid_mesh(points: np.ndarray, nu: int, nv: int) -> vtk.vtkPolyData:
    """Two triangles per raster cell, counter-clockwise seen from +w (normals along w)."""
    a, b = np.meshgrid(np.arange(nu - 1), np.arange(nv - 1))
    p00 = (b * nu + a).ravel()
    p01 = p00 + 1
    p10 = p00 + nu
    p11 = p10 + 1
    triangles = np.concatenate([np.column_stack([p00, p01, p11]), np.column_stack([p00, p11, p10])])
    polydata = vtk.vtkPolyData()
    vtk_points = vtk.vtkPoints()
    vtk_points.SetData(numpy_to_vtk(np.ascontiguousarray(points, dtype=float), deep=True))
    polydata.SetPoints(vtk_points)
    cell_array = vtk.vtkCellArray()
    offsets = np.arange(0, 3 * len(triangles) + 1, 3, dtype=np.int64)
    cell_array.SetData(
        numpy_to_vtk(offsets, deep=True), numpy_to_vtk(triangles.ravel().astype(np.int64), deep=True)
    )
    polydata.SetPolys(cell_array)
    return polydata


def _frame_from_grid(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Origin and axes (u along the columns, v along the rows, w = u × v) from the corners."""
    c00, c0n, cm0, cmn = points[0, 0], points[0, -1], points[-1, 0], points[-1, -1]
    along_columns = (c0n + cmn) - (c00 + cm0)
    along_rows = (cm0 + cmn) - (c00 + c0n)
    if np.linalg.norm(along_columns) < 1e-6 or np.linalg.norm(along_rows) < 1e-6:
        raise InputDataError(
            "the surface's corner control points coincide.",
            subject="resection surface",
            fix="spread the control points out (or create the surface again).",
        )
    u = along_columns / np.linalg.norm(along_columns)
    w = np.cross(u, along_rows)
    if np.linalg.norm(w) < 1e-6:
        raise InputDataError(
            "the surface's corner control points lie on one line.",
            subject="resection surface",
            fix="spread the control points out (or create the surface again).",
        )
    w /= np.linalg.norm(w)
    v = np.cross(w, u)
    origin = (c00 + c0n + cm0 + cmn) / 4.0
    return origin, u, v, w


def height_field_from_control_points(
    points: np.ndarray, step_mm: float, smoothing: float = 1e-9
) -> HeightField:
    """The spline surface through a (rows, columns, 3) grid of RAS control points."""
    points = np.asarray(points, float)
    origin, u, v, w = _frame_from_grid(points)
    flat = points.reshape(-1, 3)
    local = (flat - origin) @ np.column_stack([u, v, w])
    spline = ThinPlateSpline(local[:, :2], local[:, 2], smoothing=smoothing)
    u_range = (float(local[:, 0].min()), float(local[:, 0].max()))
    v_range = (float(local[:, 1].min()), float(local[:, 1].max()))
    step_mm = float(step_mm)
    # The raster step is refined if needed to stay below ~4 million samples.
    area = (u_range[1] - u_range[0]) * (v_range[1] - v_range[0])
    step_mm = max(step_mm, float(np.sqrt(area / 4.0e6)))
    nu = max(int(np.ceil((u_range[1] - u_range[0]) / step_mm)) + 1, 2)
    nv = max(int(np.ceil((v_range[1] - v_range[0]) / step_mm)) + 1, 2)
    u_range = (u_range[0], u_range[0] + (nu - 1) * step_mm)
    v_range = (v_range[0], v_range[0] + (nv - 1) * step_mm)
    uu, vv = np.meshgrid(u_range[0] + step_mm * np.arange(nu), v_range[0] + step_mm * np.arange(nv))
    heights = spline(np.column_stack([uu.ravel(), vv.ravel()])).reshape(nv, nu)
    return HeightField(origin, u, v, w, u_range, v_range, step_mm, heights)


class DeformableSurface:
    """A resection surface: control-point markups node + model node that follows it."""

    def __init__(self, control_node, model_node, rows: int, columns: int, *, step_mm: float = 0.5):
        if rows < MIN_GRID or columns < MIN_GRID:
            raise InputDataError(
                f"a deformable surface needs at least {MIN_GRID}×{MIN_GRID} control points, not {rows}×{columns}.",
                subject=control_node.GetName(),
                fix=f"use a grid of {MIN_GRID}×{MIN_GRID} or more.",
            )
        if control_node.GetNumberOfControlPoints() != rows * columns:
            raise InputDataError(
                f"has {control_node.GetNumberOfControlPoints()} control points; a {rows}×{columns} "
                f"surface needs {rows * columns}.",
                subject=control_node.GetName(),
                fix="create the surface again (points must not be added or deleted).",
            )
        self.control_node = control_node
        self.model_node = model_node
        self.rows = int(rows)
        self.columns = int(columns)
        self.step_mm = float(step_mm)
        self._cache_key: bytes | None = None
        self._height_field: HeightField | None = None
        self._observers: list[int] = []
        self.update_model()

    # --- creation ----------------------------------------------------------------------------

    @classmethod
    def create(
        cls, scene, points_ras: np.ndarray, *, name: str = "Resection surface", step_mm: float = 0.5
    ) -> DeformableSurface:
        """Nodes for a (rows, columns, 3) grid of control points, in the scene."""
        points_ras = np.asarray(points_ras, float)
        rows, columns = points_ras.shape[:2]
        control = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", f"{name} control points")
        control.SetAttribute(ROLE_ATTRIBUTE, SURFACE_ROLE)
        control.SetAttribute(ROWS_ATTRIBUTE, str(rows))
        control.SetAttribute(COLUMNS_ATTRIBUTE, str(columns))
        was_modifying = control.StartModify()
        for r in range(rows):
            for c in range(columns):
                index = control.AddControlPoint(*points_ras[r, c])
                control.SetNthControlPointLabel(index, f"{r},{c}")
        control.EndModify(was_modifying)
        control.CreateDefaultDisplayNodes()
        model = scene.AddNewNodeByClass("vtkMRMLModelNode", name)
        model.CreateDefaultDisplayNodes()
        model.GetDisplayNode().SetColor(0.95, 0.85, 0.3)
        model.GetDisplayNode().SetOpacity(0.6)
        model.GetDisplayNode().SetBackfaceCulling(False)
        control.SetNodeReferenceID(MODEL_REFERENCE, model.GetID())
        return cls(control, model, rows, columns, step_mm=step_mm)

    @classmethod
    def flat(
        cls,
        scene,
        centre_ras,
        normal_ras,
        size_mm: tuple[float, float],
        *,
        rows: int = 5,
        columns: int = 5,
        u_axis_ras=None,
        name: str = "Resection surface",
        step_mm: float = 0.5,
    ) -> DeformableSurface:
        """A flat surface: a plane through `centre_ras` with normal `normal_ras`, `size_mm` wide.

        The control grid's columns run along `u_axis_ras` (projected into the plane; any
        in-plane direction when omitted), so that u × v is the given normal.
        """
        normal = _unit(normal_ras, "normal")
        if u_axis_ras is None:
            u, v = in_plane_axes(normal)
        else:
            u = np.asarray(u_axis_ras, float) - (np.asarray(u_axis_ras, float) @ normal) * normal
            u = _unit(u, "in-plane axis")
            v = np.cross(normal, u)
        if rows < MIN_GRID or columns < MIN_GRID:
            raise InputDataError(
                f"a deformable surface needs at least {MIN_GRID}×{MIN_GRID} control points.",
                subject=name,
                fix=f"use rows, columns ≥ {MIN_GRID}.",
            )
        s = np.linspace(-0.5, 0.5, columns) * float(size_mm[0])
        t = np.linspace(-0.5, 0.5, rows) * float(size_mm[1])
        centre = np.asarray(centre_ras, float)
        points = centre + t[:, None, None] * v + s[None, :, None] * u
        return cls.create(scene, points, name=name, step_mm=step_mm)

    @classmethod
    def from_closed_curve(
        cls,
        scene,
        curve_node,
        *,
        rows: int = 5,
        columns: int = 5,
        cover_points_ras: np.ndarray | None = None,
        margin_mm: float = 5.0,
        name: str = "Resection surface",
        step_mm: float = 0.5,
    ) -> DeformableSurface:
        """A surface through a closed curve drawn around the tumour.

        The base plane is the curve's best-fit plane; its normal follows the curve's winding
        (counter-clockwise seen from the normal's tip). The control points take the heights of
        a smoothing thin-plate spline fitted to the curve, so the surface passes through (close
        to) the curve and continues smoothly beyond it. The footprint covers the curve and,
        when given, `cover_points_ras` (e.g. the organ's voxels), plus `margin_mm`.
        """
        points = _curve_points(curve_node)
        centre = points.mean(axis=0)
        _, _, vt = np.linalg.svd(points - centre)
        normal, u = vt[2], vt[0]
        # Newell's vector: the curve's area normal, which gives the winding.
        rolled = np.roll(points - centre, -1, axis=0)
        winding = np.cross(points - centre, rolled).sum(axis=0)
        if winding @ normal < 0:
            normal = -normal
        v = np.cross(normal, u)
        frame = np.column_stack([u, v, normal])
        local = (points - centre) @ frame
        extent = local[:, :2]
        if cover_points_ras is not None and len(cover_points_ras):
            cover = (np.asarray(cover_points_ras, float) - centre) @ frame[:, :2]
            extent = np.vstack([extent, cover.min(axis=0), cover.max(axis=0)])
        low = extent.min(axis=0) - margin_mm
        high = extent.max(axis=0) + margin_mm
        # Smoothing of the fit, relative to the scaled coordinates: the curve is a drawing, not
        # a measurement, and an exact fit through hundreds of points would ripple.
        spline = ThinPlateSpline(local[:, :2], local[:, 2], smoothing=1e-3)
        s = np.linspace(low[0], high[0], columns)
        t = np.linspace(low[1], high[1], rows)
        ss, tt = np.meshgrid(s, t)
        heights = spline(np.column_stack([ss.ravel(), tt.ravel()])).reshape(rows, columns)
        grid = centre + ss[..., None] * u + tt[..., None] * v + heights[..., None] * normal
        return cls.create(scene, grid, name=name, step_mm=step_mm)

    @classmethod
    def from_node(cls, control_node, *, step_mm: float = 0.5) -> DeformableSurface:
        """Rebuild the surface from its control-point node (e.g. after loading a scene)."""
        try:
            rows = int(control_node.GetAttribute(ROWS_ATTRIBUTE))
            columns = int(control_node.GetAttribute(COLUMNS_ATTRIBUTE))
        except (TypeError, ValueError):
            raise InputDataError(
                "is not the control-point node of a resection surface (no grid size).",
                subject=control_node.GetName(),
                fix="choose the '… control points' node of a surface made by SlicerVSP.",
            ) from None
        model = control_node.GetNodeReference(MODEL_REFERENCE)
        if model is None:
            model = control_node.GetScene().AddNewNodeByClass(
                "vtkMRMLModelNode", control_node.GetName().replace(" control points", "")
            )
            model.CreateDefaultDisplayNodes()
            control_node.SetNodeReferenceID(MODEL_REFERENCE, model.GetID())
        return cls(control_node, model, rows, columns, step_mm=step_mm)

    # --- geometry ----------------------------------------------------------------------------

    def control_points_ras(self) -> np.ndarray:
        """(rows, columns, 3) control point positions in world RAS."""
        count = self.control_node.GetNumberOfControlPoints()
        if count != self.rows * self.columns:
            raise InputDataError(
                f"has {count} control points; the {self.rows}×{self.columns} surface needs {self.rows * self.columns}.",
                subject=self.control_node.GetName(),
                fix="undo the added or deleted points, or create the surface again.",
            )
        points = np.array([self.control_node.GetNthControlPointPositionWorld(n) for n in range(count)], float)
        return points.reshape(self.rows, self.columns, 3)

    def set_control_point(self, row: int, column: int, ras) -> None:
        self.control_node.SetNthControlPointPositionWorld(
            row * self.columns + column, *[float(x) for x in ras]
        )

    def height_field(self) -> HeightField:
        """The surface's current height field (cached until a control point moves)."""
        points = self.control_points_ras()
        key = points.tobytes()
        if key != self._cache_key or self._height_field is None:
            self._height_field = height_field_from_control_points(points, self.step_mm)
            self._cache_key = key
        return self._height_field

    def state_key(self) -> bytes:
        return self.control_points_ras().tobytes()

    def update_model(self) -> None:
        """Rebuild the model's mesh from the control points (called on every point move)."""
        field = self.height_field()
        # The display mesh is coarser than the raster: 1 mm is smooth at any zoom that matters.
        self.model_node.SetAndObservePolyData(field.polydata(max(self.step_mm, 1.0)))

    # --- interaction -------------------------------------------------------------------------

    def observe(self) -> None:
        """Keep the model in step with the control points (PointModifiedEvent)."""
        if self._observers:
            return
        for event in (
            slicer.vtkMRMLMarkupsNode.PointModifiedEvent,
            slicer.vtkMRMLMarkupsNode.PointEndInteractionEvent,
        ):
            self._observers.append(self.control_node.AddObserver(event, self._on_point_modified))

    def stop_observing(self) -> None:
        for tag in self._observers:
            self.control_node.RemoveObserver(tag)
        self._observers = []

    def _on_point_modified(self, caller, event) -> None:
        try:
            self.update_model()
        except InputDataError:
            # A degenerate grid while dragging (corners on one line) is reported by the planner
            # on update; the model keeps its last good shape meanwhile.
            pass

    def to_plan(self, name: str, remove: str):
        from ..plan import SurfaceResection

        points = self.control_points_ras().reshape(-1, 3)
        return SurfaceResection(
            name=name,
            rows=self.rows,
            columns=self.columns,
            control_points_ras_mm=[tuple(float(x) for x in p) for p in points],
            remove=remove,
        )


def _unit(vector, what: str) -> np.ndarray:
    vector = np.asarray(vector, float)
    norm = float(np.linalg.norm(vector))
    if norm < 1e-9:
        raise InputDataError(
            f"the surface's {what} is zero.", subject="resection surface", fix="give a direction."
        )
    return vector / norm


def _curve_points(curve_node) -> np.ndarray:
    """The closed curve's interpolated points in world RAS (its control points if none yet)."""
    count = curve_node.GetNumberOfControlPoints()
    if count < 3:
        raise InputDataError(
            f"a closed curve needs at least 3 points to define a surface; it has {count}.",
            subject=curve_node.GetName(),
            fix="draw the curve around the tumour with 3 or more points.",
        )
    world = curve_node.GetCurvePointsWorld()
    if world is not None and world.GetNumberOfPoints() >= count:
        points = np.array([world.GetPoint(n) for n in range(world.GetNumberOfPoints())], float)
    else:
        points = np.array([curve_node.GetNthControlPointPositionWorld(n) for n in range(count)], float)
    # A closed curve's interpolated polyline may repeat its first point at the end.
    if len(points) > 3 and np.allclose(points[0], points[-1]):
        points = points[:-1]
    spread = np.linalg.svd(points - points.mean(axis=0), compute_uv=False)
    if spread[1] < 1e-3 * max(spread[0], 1e-9):
        raise InputDataError(
            "the closed curve's points lie on one line.",
            subject=curve_node.GetName(),
            fix="draw the curve around the tumour.",
        )
    return points
