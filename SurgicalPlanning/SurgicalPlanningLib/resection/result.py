"""Results of a resection plan: volumes, margin, cut vessels, warnings; JSON and table forms.

Units are in the key names (`_mL`, `_percent`, `_mm`, `_ras_mm`). Percentages are of the whole
organ (for the organ) or of the segment itself (for a segment). Positions are RAS millimetres.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def _r(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(float(value), digits)


def _point(point) -> list[float] | None:
    return None if point is None else [round(float(x), 2) for x in point]


@dataclass
class SegmentVolumes:
    """Volume of one segment (or of the whole organ), and how much of it is resected."""

    segment_id: str
    name: str
    structure_key: str | None
    volume_mL: float
    resected_volume_mL: float

    @property
    def remnant_volume_mL(self) -> float:
        return self.volume_mL - self.resected_volume_mL

    @property
    def resected_fraction_percent(self) -> float:
        return 100.0 * self.resected_volume_mL / self.volume_mL if self.volume_mL > 0 else 0.0

    @property
    def remnant_fraction_percent(self) -> float:
        return 100.0 - self.resected_fraction_percent if self.volume_mL > 0 else 0.0

    def to_json(self) -> dict:
        return {
            "segment_id": self.segment_id,
            "name": self.name,
            "structure_key": self.structure_key,
            "volume_mL": _r(self.volume_mL),
            "resected_volume_mL": _r(self.resected_volume_mL),
            "remnant_volume_mL": _r(self.remnant_volume_mL),
            "resected_fraction_percent": _r(self.resected_fraction_percent, 2),
            "remnant_fraction_percent": _r(self.remnant_fraction_percent, 2),
        }


@dataclass
class VolumeSummary:
    """The interactive part of a result: what a plane move recomputes (milliseconds)."""

    organ_volume_mL: float
    resected_volume_mL: float
    segments: list[SegmentVolumes]
    tumour_volume_mL: float | None = None
    tumour_in_remnant_mL: float | None = None

    @property
    def remnant_volume_mL(self) -> float:
        return self.organ_volume_mL - self.resected_volume_mL

    @property
    def resected_fraction_percent(self) -> float:
        return 100.0 * self.resected_volume_mL / self.organ_volume_mL if self.organ_volume_mL else 0.0

    @property
    def remnant_fraction_percent(self) -> float:
        return 100.0 - self.resected_fraction_percent

    @property
    def positive_margin(self) -> bool:
        """Tumour tissue in the remnant: the resection does not take the whole tumour."""
        return bool(self.tumour_in_remnant_mL)

    def segment(self, segment_id_or_key: str) -> SegmentVolumes:
        for row in self.segments:
            if segment_id_or_key in (row.segment_id, row.structure_key):
                return row
        raise KeyError(segment_id_or_key)

    def to_json(self) -> dict:
        return {
            "organ_volume_mL": _r(self.organ_volume_mL),
            "resected_volume_mL": _r(self.resected_volume_mL),
            "remnant_volume_mL": _r(self.remnant_volume_mL),
            "resected_fraction_percent": _r(self.resected_fraction_percent, 2),
            "remnant_fraction_percent": _r(self.remnant_fraction_percent, 2),
            "tumour_volume_mL": _r(self.tumour_volume_mL),
            "tumour_in_remnant_mL": _r(self.tumour_in_remnant_mL),
            "positive_margin": self.positive_margin,
            "segments": [row.to_json() for row in self.segments],
        }


@dataclass
class CutVessel:
    """A vessel branch crossing the resection surface (one entry per crossing)."""

    name: str
    segment_id: str
    structure_key: str | None
    point_ras_mm: tuple[float, float, float]
    diameter_mm: float

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "segment_id": self.segment_id,
            "structure_key": self.structure_key,
            "point_ras_mm": _point(self.point_ras_mm),
            "diameter_mm": _r(self.diameter_mm, 2),
        }


@dataclass
class ResectionResult:
    """Everything a resection plan computes (see `ResectionPlanner.update`)."""

    volumes: VolumeSummary
    min_margin_mm: float | None = None
    min_margin_point_ras_mm: tuple[float, float, float] | None = None
    min_margin_tumour_point_ras_mm: tuple[float, float, float] | None = None
    positive_margin: bool = False
    cut_vessels: list[CutVessel] = field(default_factory=list)
    checked_vessels: list[str] = field(default_factory=list)
    resections: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    spacing_mm: float = 0.5  # as asked; the working grid's voxels are `voxel_size_mm`
    voxel_size_mm: tuple[float, float, float] | None = None
    organ_voxels: int = 0
    timings_s: dict[str, float] = field(default_factory=dict)

    # Flat accessors for the numbers everybody asks for.
    @property
    def organ_volume_mL(self) -> float:
        return self.volumes.organ_volume_mL

    @property
    def resected_volume_mL(self) -> float:
        return self.volumes.resected_volume_mL

    @property
    def remnant_volume_mL(self) -> float:
        return self.volumes.remnant_volume_mL

    @property
    def resected_fraction_percent(self) -> float:
        return self.volumes.resected_fraction_percent

    @property
    def remnant_fraction_percent(self) -> float:
        return self.volumes.remnant_fraction_percent

    @property
    def cut_branch_names(self) -> list[str]:
        """Names of the cut branches, each once, in the order first crossed."""
        return list(dict.fromkeys(vessel.name for vessel in self.cut_vessels))

    @property
    def cut_branch_keys(self) -> list[str]:
        """Structure keys of the cut branches (for territory look-up), each once."""
        return list(dict.fromkeys(v.structure_key for v in self.cut_vessels if v.structure_key))

    def to_json(self) -> dict:
        volumes = self.volumes.to_json()
        return {
            "organ_volume_mL": volumes["organ_volume_mL"],
            "resected_volume_mL": volumes["resected_volume_mL"],
            "remnant_volume_mL": volumes["remnant_volume_mL"],
            "resected_fraction_percent": volumes["resected_fraction_percent"],
            "remnant_fraction_percent": volumes["remnant_fraction_percent"],
            "segments": volumes["segments"],
            "tumour_volume_mL": volumes["tumour_volume_mL"],
            "tumour_in_remnant_mL": volumes["tumour_in_remnant_mL"],
            "min_margin_mm": _r(self.min_margin_mm, 2),
            "min_margin_point_ras_mm": _point(self.min_margin_point_ras_mm),
            "min_margin_tumour_point_ras_mm": _point(self.min_margin_tumour_point_ras_mm),
            "positive_margin": bool(self.positive_margin),
            "cut_vessels": [vessel.to_json() for vessel in self.cut_vessels],
            "checked_vessels": list(self.checked_vessels),
            "resections": list(self.resections),
            "warnings": list(self.warnings),
            "grid": {
                "spacing_mm": self.spacing_mm,
                "voxel_size_mm": [round(v, 4) for v in self.voxel_size_mm] if self.voxel_size_mm else None,
                "organ_voxels": self.organ_voxels,
            },
            "timings_s": {key: round(value, 4) for key, value in self.timings_s.items()},
        }

    def table_rows(self) -> list[tuple[str, str]]:
        """(quantity, value) rows: the quantity names carry the unit."""

        def text(value) -> str:
            if value is None:
                return ""
            if isinstance(value, bool):
                return "yes" if value else "no"
            if isinstance(value, float | np.floating):
                return f"{float(value):.2f}"
            if isinstance(value, list | tuple):
                return ", ".join(text(v) for v in value)
            return str(value)

        data = self.to_json()
        rows = [
            (key, text(data[key]))
            for key in (
                "organ_volume_mL",
                "resected_volume_mL",
                "remnant_volume_mL",
                "resected_fraction_percent",
                "remnant_fraction_percent",
                "tumour_volume_mL",
                "tumour_in_remnant_mL",
                "min_margin_mm",
                "min_margin_point_ras_mm",
                "positive_margin",
            )
        ]
        for row in data["segments"]:
            for key in ("volume_mL", "resected_volume_mL", "remnant_volume_mL", "remnant_fraction_percent"):
                rows.append((f"{row['name']}: {key}", text(row[key])))
        for vessel in data["cut_vessels"]:
            rows.append((f"cut vessel {vessel['name']}: point_ras_mm", text(vessel["point_ras_mm"])))
            rows.append((f"cut vessel {vessel['name']}: diameter_mm", text(vessel["diameter_mm"])))
        for n, warning in enumerate(data["warnings"], start=1):
            rows.append((f"warning {n}", warning))
        return rows

    def to_table_node(self, scene, name: str = "Resection results", table_node=None):
        """The results as a two-column `vtkMRMLTableNode` (quantity with unit, value)."""
        import vtk

        if table_node is None:
            table_node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
        table = vtk.vtkTable()
        for column in ("quantity", "value"):
            array = vtk.vtkStringArray()
            array.SetName(column)
            table.AddColumn(array)
        for quantity, value in self.table_rows():
            table.InsertNextBlankRow()
            row = table.GetNumberOfRows() - 1
            table.SetValue(row, 0, vtk.vtkVariant(quantity))
            table.SetValue(row, 1, vtk.vtkVariant(value))
        table_node.SetAndObserveTable(table)
        return table_node
