"""The resection planner: resections on MRML nodes, their results, and the nodes it writes.

`ResectionPlanner` is the one object the Slicer panel, the `vsp` command and the tests use:

    planner = ResectionPlanner(app, segmentation_node, organ_ids, tumour_id, vessel_ids)
    planner.add_plane(plane_node, remove="positive")        # or add_surface / add_margin
    planner.update_volumes()    # interactive: resected/remnant volumes, positive-margin flag
    result = planner.update()   # on release: + margin map, cut vessels; writes the nodes

What is interactive and what is not (times: the full-size sample case's left kidney, 0.5 mm
asked: a 0.35 × 0.35 × 0.5 mm working grid, about two million organ voxels, one core; see
benchmarks/bench_resection.py):
- `update_volumes()`: organ, segment and tumour volumes on each side, and whether tumour tissue
  is left in the remnant. A plane is one matrix product over the cached organ voxel centres
  (~15 ms of processor time a move); a deformable surface a re-fitted spline and one bilinear look-up per voxel
  (~15 ms); a margin resection a comparison with a cached distance.
- `update()`: everything above plus the resection surface with its tumour distance map, the
  minimum margin and where, the cut vessel branches with position and diameter, and the output
  nodes (~0.15 s for a plane; ~0.7 s for a margin resection, whose first update computes the
  tumour's distance transform). It computes everything first and writes the nodes last; when
  it raises, the previous result and nodes are left as they were.
- Making the planner reads and resamples the segments once (~1 s); `reload_segments()` after
  the segmentation is edited.
`watch()` wires both to the markups nodes: PointModifiedEvent → `update_volumes`,
PointEndInteractionEvent (mouse release in the desktop) → `update`.

Nodes written (created on the first successful update, reused afterwards):
- "<name> regions": a segmentation with segments "Remnant" and "Resected" on the working grid;
- "<name> surface": the resection surface, point array "TumourDistance_mm", coloured by a
  colour table (red at 0 mm, yellow at 5 mm, green from 10 mm) with a colour legend;
- "<name> planner": a scripted-module node holding the planner's configuration (organ, tumour
  and vessel segments, resections with references to their markups nodes) and the last result,
  so a saved scene can be reopened and the plan re-applied (`ResectionPlanner.from_scene`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence

import numpy as np
import slicer

from VSPCoreLib.errors import InputDataError, VSPError
from VSPCoreLib.progress import ProgressCallback, report, scaled

from .cuts import Cut, MarginCut, PlaneCut, SurfaceCut, plane_geometry
from .measures import measure_margin, resection_surface, vessel_crossings
from .outputs import write_regions, write_surface
from .region import OrganRegion, segment_info
from .result import CutVessel, ResectionResult, SegmentVolumes, VolumeSummary
from .surfaces import DeformableSurface

log = logging.getLogger(__name__)

PLANNER_ROLE = "resection planner"
ROLE_ATTRIBUTE = "SlicerVSP.Role"
CONFIG_PARAMETER = "ResectionConfigJSON"
RESULT_PARAMETER = "ResectionResultJSON"


def _scene_of(app_or_scene):
    scene = getattr(app_or_scene, "scene", app_or_scene)
    if not isinstance(scene, slicer.vtkMRMLScene):
        raise VSPError("expected a VSPApplication or a vtkMRMLScene.", subject="resection planner")
    return scene


def _as_id_list(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return list(value)


class ResectionPlanner:
    """Resections of one organ (plane, deformable surface, margin), combined by union.

    `organ_segment_id` is one segment ID or several (e.g. cortex, medulla, pelvis and calyces
    of a kidney); the organ is their union together with the tumour. Volumes are reported for
    the organ and for each of `report_segment_ids` (by default the organ segments and the
    tumour). `vessel_segment_ids` are the branches checked for cuts, each its own segment.
    """

    def __init__(
        self,
        app_or_scene,
        segmentation_node,
        organ_segment_id: str | Sequence[str],
        tumour_segment_id: str | None = None,
        vessel_segment_ids: Sequence[str] | None = None,
        spacing_mm: float = 0.5,
        *,
        report_segment_ids: Sequence[str] | None = None,
        vessel_envelope_mm: float = 5.0,
        name: str = "Resection",
        progress: ProgressCallback | None = None,
    ):
        self.scene = _scene_of(app_or_scene)
        if segmentation_node is None or segmentation_node.GetScene() is not self.scene:
            raise InputDataError(
                "the segmentation is not in this scene.", subject="resection planner", fix="load it first."
            )
        self.name = name
        self.segmentation_node = segmentation_node
        self.organ_segment_ids = _as_id_list(organ_segment_id)
        self.tumour_segment_id = tumour_segment_id
        self.vessel_segment_ids = _as_id_list(vessel_segment_ids)
        self.report_segment_ids = _as_id_list(report_segment_ids) or None
        self._spacing_mm = float(spacing_mm)
        self._vessel_envelope_mm = float(vessel_envelope_mm)
        self._set_region(self._read_region(progress))
        self.cuts: list[Cut] = []
        self.result: ResectionResult | None = None
        self.output_segmentation_node = None
        self.surface_model_node = None
        self.planner_node = None
        self._observations: list[tuple[object, int]] = []
        self._surfaces: list[DeformableSurface] = []

    def _read_region(self, progress: ProgressCallback | None) -> OrganRegion:
        return OrganRegion(
            self.segmentation_node,
            self.organ_segment_ids,
            self.tumour_segment_id,
            self.vessel_segment_ids,
            self.report_segment_ids,
            spacing_mm=self._spacing_mm,
            vessel_envelope_mm=self._vessel_envelope_mm,
            progress=progress,
        )

    def _set_region(self, region: OrganRegion) -> None:
        self.region = region
        self._removed_cache: dict[int, tuple[tuple, np.ndarray]] = {}
        self._segment_totals = {sid: int(np.count_nonzero(m)) for sid, m in region.membership.items()}
        self._tumour_total = (
            int(np.count_nonzero(region.tumour_member)) if region.tumour_member is not None else None
        )

    def reload_segments(self, progress: ProgressCallback | None = None) -> None:
        """Read the organ, tumour and vessel segments again (after they were edited).

        The planner reads them once, when it is made; the resections stay. On error (e.g. a
        segment edited to empty) the planner keeps the segments it had.
        """
        self._set_region(self._read_region(progress))

    # --- resections ------------------------------------------------------------------------------

    def _unique_name(self, base: str) -> str:
        names = {cut.name for cut in self.cuts}
        if base not in names:
            return base
        n = 2
        while f"{base} {n}" in names:
            n += 1
        return f"{base} {n}"

    def add_plane(self, plane_node, remove: str, name: str | None = None) -> PlaneCut:
        """Remove the organ on the `remove` side ("positive": where the normal points) of a plane."""
        plane_geometry(plane_node)  # a plane that is not placed yet is refused here
        cut = PlaneCut(plane_node, remove, self._unique_name(name or plane_node.GetName()))
        self.cuts.append(cut)
        return cut

    def add_surface(self, surface: DeformableSurface, remove: str, name: str | None = None) -> SurfaceCut:
        """Remove the organ on the `remove` side ("positive": along u × v) of a deformable surface."""
        cut = SurfaceCut(surface, remove, self._unique_name(name or surface.model_node.GetName()))
        surface.observe()
        self._surfaces.append(surface)
        self.cuts.append(cut)
        return cut

    def add_margin(
        self,
        margin_mm: float,
        clip_plane_node=None,
        clip_remove: str = "positive",
        name: str | None = None,
    ) -> MarginCut:
        """Remove the tumour and `margin_mm` of organ around it; optionally only on the
        `clip_remove` side of `clip_plane_node`."""
        if self.region.tumour is None:
            raise InputDataError(
                "a margin resection needs a tumour segment.",
                subject=name or "margin resection",
                fix="create the planner with the tumour segment.",
            )
        clip = None
        if clip_plane_node is not None:
            plane_geometry(clip_plane_node)
            clip = PlaneCut(clip_plane_node, clip_remove, f"{clip_plane_node.GetName()} (clip)")
        cut = MarginCut(margin_mm, clip, self._unique_name(name or f"Margin {float(margin_mm):g} mm"))
        self.cuts.append(cut)
        return cut

    def remove_resection(self, cut: Cut) -> None:
        self.cuts.remove(cut)
        self._removed_cache.pop(id(cut), None)
        if isinstance(cut, SurfaceCut) and cut.surface in self._surfaces:
            self._surfaces.remove(cut.surface)

    def create_plane(self, origin_ras, normal_ras, name: str = "Resection plane"):
        """A markups plane node through `origin_ras` with `normal_ras`, drawn as large as the organ."""
        plane = self.scene.AddNewNodeByClass("vtkMRMLMarkupsPlaneNode", name)
        plane.SetOriginWorld(*[float(x) for x in origin_ras])
        plane.SetNormalWorld(*[float(x) for x in normal_ras])
        extent = float(np.ptp(self.region.organ_points, axis=0).max()) + 20.0
        plane.SetSizeMode(plane.SizeModeAbsolute)
        plane.SetSize(extent, extent)
        plane.CreateDefaultDisplayNodes()
        return plane

    def flat_surface(
        self,
        normal_ras,
        centre_ras=None,
        *,
        rows: int = 5,
        columns: int = 5,
        name: str = "Resection surface",
    ) -> DeformableSurface:
        """A flat deformable surface through the tumour centre (or `centre_ras`), sized to the organ.

        The footprint covers the organ's projection onto the plane plus 10 mm on every side,
        so that the surface cuts through the whole organ.
        """
        normal = np.asarray(normal_ras, float)
        normal = normal / np.linalg.norm(normal)
        if centre_ras is None:
            if self.region.tumour_member is None:
                raise InputDataError(
                    "no tumour to centre the surface on.", subject=name, fix="give centre_ras."
                )
            centre_ras = self.region.organ_points[self.region.tumour_member].mean(axis=0)
        centre = np.asarray(centre_ras, float)
        from .geometry import in_plane_axes

        u, v = in_plane_axes(normal)
        local = (self.region.organ_points - centre) @ np.column_stack([u, v])
        half = np.abs(local).max(axis=0) + 10.0
        # Centred on the given point: the footprint is symmetric, so the control grid's middle
        # is where the surgeon expects it (at the tumour).
        return DeformableSurface.flat(
            self.scene,
            centre,
            normal,
            (2.0 * half[0], 2.0 * half[1]),
            rows=rows,
            columns=columns,
            u_axis_ras=u,
            name=name,
            step_mm=self.region.spacing_mm,
        )

    def surface_from_curve(
        self, curve_node, *, rows: int = 5, columns: int = 5, name: str = "Resection surface"
    ) -> DeformableSurface:
        """A deformable surface through a closed curve drawn around the tumour, sized to the organ."""
        return DeformableSurface.from_closed_curve(
            self.scene,
            curve_node,
            rows=rows,
            columns=columns,
            cover_points_ras=self.region.organ_points,
            margin_mm=10.0,
            name=name,
            step_mm=self.region.spacing_mm,
        )

    # --- interactive volumes -------------------------------------------------------------------

    def _removed_by(self, cut: Cut) -> np.ndarray:
        key = cut.state_key()
        cached = self._removed_cache.get(id(cut))
        if cached is not None and cached[0] == key:
            return cached[1]
        removed = cut.removed_organ(self.region)
        self._removed_cache[id(cut)] = (key, removed)
        return removed

    def removed_mask(self) -> np.ndarray:
        """(N,) bool over the organ voxels: removed by any resection (checks each resection)."""
        if not self.cuts:
            raise InputDataError(
                "the plan has no resection yet.",
                subject=self.name,
                fix="add a plane, surface or margin resection.",
            )
        removed = self._removed_by(self.cuts[0])
        if len(self.cuts) > 1:
            removed = removed.copy()
            for cut in self.cuts[1:]:
                removed |= self._removed_by(cut)
        return removed

    def update_volumes(self) -> VolumeSummary:
        """Resected and remnant volumes now (the fast path for dragging a plane)."""
        return self._volumes(self.removed_mask())

    def _volumes(self, removed: np.ndarray) -> VolumeSummary:
        to_ml = self.region.voxel_volume_mm3 / 1000.0
        rows = []
        for info in self.region.segments:
            member = self.region.membership[info.segment_id]
            rows.append(
                SegmentVolumes(
                    info.segment_id,
                    info.name,
                    info.structure_key,
                    self._segment_totals[info.segment_id] * to_ml,
                    np.count_nonzero(removed & member) * to_ml,
                )
            )
        tumour_ml = in_remnant_ml = None
        if self.region.tumour_member is not None:
            tumour_ml = self._tumour_total * to_ml
            in_remnant_ml = np.count_nonzero(self.region.tumour_member & ~removed) * to_ml
        return VolumeSummary(
            organ_volume_mL=self.region.organ_voxel_count * to_ml,
            resected_volume_mL=np.count_nonzero(removed) * to_ml,
            segments=rows,
            tumour_volume_mL=tumour_ml,
            tumour_in_remnant_mL=in_remnant_ml,
        )

    # --- full update -----------------------------------------------------------------------------

    def _depth_functions(self) -> list[Callable[[np.ndarray], np.ndarray]]:
        return [lambda points, cut=cut: cut.depth_mm(self.region, points) for cut in self.cuts]

    def compute(self, progress: ProgressCallback | None = None) -> tuple[ResectionResult, dict]:
        """Compute a full result and the data of the output nodes, without touching the scene."""
        timings: dict[str, float] = {}
        start = time.perf_counter()
        report(progress, 0.0, "resected and remnant volumes")
        removed = self.removed_mask()
        volumes = self._volumes(removed)
        timings["volumes"] = time.perf_counter() - start

        t = time.perf_counter()
        report(progress, 0.2, "resection surface")
        depth_functions = self._depth_functions()
        pieces = []
        for n, cut in enumerate(self.cuts):
            for mesh, keep in cut.cut_pieces(self.region):
                pieces.append((n, mesh, keep))
        surface = resection_surface(self.region, pieces, depth_functions)
        timings["surface"] = time.perf_counter() - t

        t = time.perf_counter()
        report(progress, 0.45, "tumour margin")
        margin = measure_margin(self.region, surface)
        timings["margin"] = time.perf_counter() - t

        t = time.perf_counter()
        report(progress, 0.65, "vessels crossing the resection")

        def union_depth(points: np.ndarray) -> np.ndarray:
            return np.max(np.stack([depth(points) for depth in depth_functions]), axis=0)

        crossings = vessel_crossings(self.region, union_depth)
        timings["vessels"] = time.perf_counter() - t

        warnings = list(self.region.warnings)
        positive = volumes.positive_margin
        if volumes.tumour_in_remnant_mL:
            share = 100.0 * volumes.tumour_in_remnant_mL / volumes.tumour_volume_mL
            warnings.append(
                f"POSITIVE MARGIN: {volumes.tumour_in_remnant_mL:.2f} mL of the tumour ({share:.1f} %) "
                "lies in the remnant."
            )
        if margin.min_margin_mm is not None and margin.min_margin_mm < 0.0:
            positive = True
            if not volumes.tumour_in_remnant_mL:
                warnings.append(
                    f"POSITIVE MARGIN: the resection surface passes {-margin.min_margin_mm:.2f} mm "
                    "into the tumour."
                )
        if self.region.tumour is not None and surface.GetNumberOfPoints() == 0:
            warnings.append(
                "the resection surface does not lie inside the organ; no margin could be measured."
            )

        result = ResectionResult(
            volumes=volumes,
            min_margin_mm=margin.min_margin_mm,
            min_margin_point_ras_mm=_tuple(margin.point_ras_mm),
            min_margin_tumour_point_ras_mm=_tuple(margin.tumour_point_ras_mm),
            positive_margin=positive,
            cut_vessels=[
                CutVessel(
                    c.info.name,
                    c.info.segment_id,
                    c.info.structure_key,
                    _tuple(c.point_ras_mm),
                    c.diameter_mm,
                )
                for c in crossings
            ],
            checked_vessels=[b.info.name for b in self.region.vessels if b.reaches_organ],
            resections=[cut.describe() for cut in self.cuts],
            warnings=warnings,
            spacing_mm=self.region.spacing_mm,
            voxel_size_mm=tuple(float(v) for v in self.region.grid.spacing_mm),
            organ_voxels=self.region.organ_voxel_count,
        )

        t = time.perf_counter()
        report(progress, 0.85, "output regions")
        outputs = {
            "remnant": self.region.labelmap(self.region.organ_index[~removed]),
            "resected": self.region.labelmap(self.region.organ_index[removed]),
            "surface": margin.surface,
        }
        timings["outputs"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - start
        result.timings_s = timings
        return result, outputs

    def update(self, progress: ProgressCallback | None = None) -> ResectionResult:
        """Compute everything, then write the output nodes; on error nothing changes."""
        result, outputs = self.compute(scaled(progress, 0.0, 0.9))
        report(progress, 0.9, "writing the output nodes")
        self._write_nodes(result, outputs)
        self.result = result
        report(progress, 1.0, "resection updated")
        return result

    # --- output nodes ----------------------------------------------------------------------------

    def _write_nodes(self, result: ResectionResult, outputs: dict) -> None:
        scene = self.scene
        scene.StartState(scene.BatchProcessState)
        try:
            self.output_segmentation_node = write_regions(
                scene,
                self.output_segmentation_node,
                self.name,
                self.region.grid,
                outputs["remnant"],
                outputs["resected"],
            )
            self.surface_model_node = write_surface(
                scene, self.surface_model_node, f"{self.name} surface", outputs["surface"]
            )
            self.store_in_scene(result)
        finally:
            scene.EndState(scene.BatchProcessState)

    # --- persistence ---------------------------------------------------------------------------

    def config(self) -> dict:
        """The planner's configuration as JSON-ready values (node references by role)."""
        resections = []
        for n, cut in enumerate(self.cuts):
            entry = {"name": cut.name, "kind": cut.kind}
            if isinstance(cut, PlaneCut | SurfaceCut):
                entry.update({"remove": cut.remove, "node_role": f"cut{n}"})
            else:
                entry["margin_mm"] = cut.margin_mm
                if cut.clip is not None:
                    entry.update({"clip_remove": cut.clip.remove, "clip_role": f"clip{n}"})
            resections.append(entry)
        return {
            "name": self.name,
            "organ_segment_ids": self.organ_segment_ids,
            "tumour_segment_id": self.tumour_segment_id,
            "vessel_segment_ids": self.vessel_segment_ids,
            "report_segment_ids": self.report_segment_ids,
            "spacing_mm": self.region.spacing_mm,
            "vessel_envelope_mm": self.region.vessel_envelope_mm,
            "resections": resections,
        }

    def store_in_scene(self, result: ResectionResult | None = None):
        """Write the configuration (and a result) into the planner node; returns the node."""
        node = self.planner_node
        if node is None or node.GetScene() is None:
            node = self.scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", f"{self.name} planner")
            node.SetAttribute("ModuleName", "SurgicalPlanning")
            node.SetAttribute(ROLE_ATTRIBUTE, PLANNER_ROLE)
            self.planner_node = node
        # Drop the references of resections that have been removed since the last store.
        try:
            previous = len(json.loads(node.GetParameter(CONFIG_PARAMETER) or "{}").get("resections", []))
        except json.JSONDecodeError:
            previous = 0
        for n in range(max(previous, len(self.cuts))):
            node.RemoveNodeReferenceIDs(f"cut{n}")
            node.RemoveNodeReferenceIDs(f"clip{n}")
        node.SetNodeReferenceID("segmentation", self.segmentation_node.GetID())
        for n, cut in enumerate(self.cuts):
            if isinstance(cut, PlaneCut):
                node.SetNodeReferenceID(f"cut{n}", cut.plane_node.GetID())
            elif isinstance(cut, SurfaceCut):
                node.SetNodeReferenceID(f"cut{n}", cut.surface.control_node.GetID())
            elif cut.clip is not None:
                node.SetNodeReferenceID(f"clip{n}", cut.clip.plane_node.GetID())
        for role, output in (
            ("outputSegmentation", self.output_segmentation_node),
            ("surfaceModel", self.surface_model_node),
        ):
            if output is not None and output.GetScene() is not None:
                node.SetNodeReferenceID(role, output.GetID())
        node.SetParameter(CONFIG_PARAMETER, json.dumps(self.config()))
        if result is not None:
            node.SetParameter(RESULT_PARAMETER, json.dumps(result.to_json()))
        return node

    @classmethod
    def from_scene(cls, app_or_scene, planner_node=None, *, progress: ProgressCallback | None = None):
        """Rebuild a planner and its resections from its node in a (re)loaded scene."""
        scene = _scene_of(app_or_scene)
        node = planner_node or find_planner_node(scene)
        if node is None:
            raise InputDataError(
                "the scene holds no resection planner.", subject="scene", fix="plan a resection first."
            )
        try:
            config = json.loads(node.GetParameter(CONFIG_PARAMETER) or "")
        except json.JSONDecodeError:
            raise InputDataError(
                "the resection planner's configuration is unreadable.",
                subject=node.GetName(),
                fix="plan again.",
            ) from None
        segmentation = node.GetNodeReference("segmentation")
        if segmentation is None:
            raise InputDataError(
                "the planner's segmentation is missing from the scene.",
                subject=node.GetName(),
                fix="load it.",
            )
        planner = cls(
            scene,
            segmentation,
            config["organ_segment_ids"],
            config.get("tumour_segment_id"),
            config.get("vessel_segment_ids") or None,
            config.get("spacing_mm", 0.5),
            report_segment_ids=config.get("report_segment_ids"),
            vessel_envelope_mm=config.get("vessel_envelope_mm", 5.0),
            name=config.get("name", "Resection"),
            progress=progress,
        )
        planner.planner_node = node
        planner.output_segmentation_node = node.GetNodeReference("outputSegmentation")
        planner.surface_model_node = node.GetNodeReference("surfaceModel")
        for entry in config.get("resections", []):
            kind = entry.get("kind")
            if kind == "plane":
                plane = _required_reference(node, entry["node_role"], entry["name"])
                planner.add_plane(plane, entry["remove"], entry["name"])
            elif kind == "surface":
                control = _required_reference(node, entry["node_role"], entry["name"])
                surface = DeformableSurface.from_node(control, step_mm=planner.region.spacing_mm)
                planner.add_surface(surface, entry["remove"], entry["name"])
            elif kind == "margin":
                clip = (
                    _required_reference(node, entry["clip_role"], entry["name"])
                    if "clip_role" in entry
                    else None
                )
                planner.add_margin(
                    entry["margin_mm"], clip, entry.get("clip_remove", "positive"), entry["name"]
                )
            else:
                raise InputDataError(
                    f"unknown resection kind {kind!r}.", subject=node.GetName(), fix="plan again."
                )
        return planner

    # --- the plan model (plan.py) --------------------------------------------------------------

    def to_plan_resections(self) -> list:
        """The resections as `plan.PlaneResection` / `SurfaceResection` / `MarginResection`."""
        return [cut.to_plan() for cut in self.cuts]

    def add_from_plan(self, resection) -> Cut:
        """Add a resection from the plan model, creating its markups nodes in the scene."""
        if resection.kind == "plane":
            plane = self.create_plane(resection.origin_ras_mm, resection.normal_ras, resection.name)
            return self.add_plane(plane, resection.remove, resection.name)
        if resection.kind == "surface":
            points = np.asarray(resection.control_points_ras_mm, float).reshape(
                resection.rows, resection.columns, 3
            )
            surface = DeformableSurface.create(
                self.scene, points, name=resection.name, step_mm=self.region.spacing_mm
            )
            return self.add_surface(surface, resection.remove, resection.name)
        if resection.kind == "margin":
            clip_node = clip_remove = None
            if resection.clip_plane is not None:
                clip = resection.clip_plane
                clip_node = self.create_plane(clip.origin_ras_mm, clip.normal_ras, clip.name)
                clip_remove = clip.remove
            return self.add_margin(resection.margin_mm, clip_node, clip_remove or "positive", resection.name)
        raise InputDataError(
            f"unknown resection kind {resection.kind!r}.", subject="plan", fix="check the plan."
        )

    # --- interaction -----------------------------------------------------------------------------

    def watch(
        self,
        on_volumes: Callable[[VolumeSummary], None] | None = None,
        on_result: Callable[[ResectionResult], None] | None = None,
        on_error: Callable[[VSPError], None] | None = None,
    ) -> None:
        """Recompute when a resection's markups move: volumes while dragging, all on release.

        VTK swallows exceptions raised in observers, so errors go to `on_error` (by default the
        log) instead of being raised.
        """
        self.unwatch()

        def guarded(action, callback):
            def handler(caller, event):
                try:
                    value = action()
                except VSPError as error:
                    (on_error or (lambda e: log.warning("%s", e)))(error)
                    return
                if callback is not None:
                    callback(value)

            return handler

        fast = guarded(self.update_volumes, on_volumes)
        full = guarded(self.update, on_result)
        for cut in self.cuts:
            for markups in cut.nodes():
                for event, handler in (
                    (slicer.vtkMRMLMarkupsNode.PointModifiedEvent, fast),
                    (slicer.vtkMRMLMarkupsNode.PointEndInteractionEvent, full),
                ):
                    self._observations.append((markups, markups.AddObserver(event, handler)))

    def unwatch(self) -> None:
        for markups, tag in self._observations:
            markups.RemoveObserver(tag)
        self._observations = []

    def close(self) -> None:
        """Stop observing nodes (the planner's nodes stay in the scene)."""
        self.unwatch()
        for surface in self._surfaces:
            surface.stop_observing()


def find_planner_node(scene):
    nodes = scene.GetNodesByClass("vtkMRMLScriptedModuleNode")
    for index in range(nodes.GetNumberOfItems()):
        node = nodes.GetItemAsObject(index)
        if node.GetAttribute(ROLE_ATTRIBUTE) == PLANNER_ROLE:
            return node
    return None


def _required_reference(node, role: str, name: str):
    referenced = node.GetNodeReference(role)
    if referenced is None:
        raise InputDataError(
            f"the markups node of resection {name!r} is missing from the scene.",
            subject=node.GetName(),
            fix="load the complete scene, or add the resection again.",
        )
    return referenced


def _tuple(point) -> tuple[float, float, float] | None:
    return None if point is None else tuple(float(x) for x in point)


__all__ = ["ResectionPlanner", "find_planner_node", "segment_info"]
