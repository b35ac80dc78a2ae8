"""The surgical plan: a typed, versioned record of what the planner decided and what it means.

A plan references its case (source series, frame of reference, segmentation), holds one or more
variants (each a list of resections and, optionally, branches to clamp) and the results computed
for each variant, with the software version and time. It is stored:
- in the scene, as a `vtkMRMLScriptedModuleNode` ("SlicerVSP plan") whose `PlanJSON` parameter
  holds the JSON, so a saved scene (.mrml/.mrb) carries it;
- in the case folder as `plan.json` (written atomically).
The JSON follows `data/plan.schema.json` (JSON Schema, draft 2020-12); `from_dict` checks every
field (naming the one at fault) and validates the document against the published schema with
`jsonschema` (an unknown field is refused with the closest valid name). Coordinates are RAS
millimetres (MRML's frame).

Structures are named by terminology key, segment name or segment ID (`structures.StructureRef`):
`case.organ` / `case.tumour` ({"key": "kidney_left"}, {"name": "Kidney, left"} or
{"segment_id": "Segment_1"}; the older `organ_key` / `tumour_key` strings are keys), and each
vessel tree branch by its key, or as {"parent": ..., "name" | "segment_id" | "key": ...}.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from VSPCoreLib.errors import InputDataError

from . import __version__
from .structures import StructureRef

SCHEMA_VERSION = 1
PLAN_NODE_NAME = "SlicerVSP plan"
PLAN_PARAMETER = "PlanJSON"
PLAN_FILE = "plan.json"
SCHEMA_FILE = Path(__file__).with_name("data") / "plan.schema.json"

REMOVE_SIDES = ("positive", "negative")


class PlanFormatError(InputDataError):
    """A plan document that does not follow the schema."""


def _fail(where: str, message: str) -> PlanFormatError:
    return PlanFormatError(
        f"{where}: {message}", subject="plan", fix="correct the plan file or make it again in SlicerVSP."
    )


def _require(data: dict, key: str, where: str, kinds: type | tuple[type, ...]):
    if not isinstance(data, dict):
        raise _fail(where, "expected an object")
    if key not in data:
        raise _fail(where, f"missing {key!r}")
    value = data[key]
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        raise _fail(f"{where}.{key}", f"expected {kinds}, got a boolean")
    if not isinstance(value, kinds):
        raise _fail(
            f"{where}.{key}", f"expected {getattr(kinds, '__name__', kinds)}, got {type(value).__name__}"
        )
    return value


def _vector(data: dict, key: str, where: str, length: int = 3) -> tuple[float, ...]:
    value = _require(data, key, where, list)
    if len(value) != length or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        raise _fail(f"{where}.{key}", f"expected {length} numbers")
    return tuple(float(v) for v in value)


# --- resections --------------------------------------------------------------------------------


@dataclass
class PlaneResection:
    """Remove the organ on one side of a plane (the side the normal points to: "positive")."""

    name: str
    origin_ras_mm: tuple[float, float, float]
    normal_ras: tuple[float, float, float]
    remove: str = "positive"
    kind: str = "plane"

    def validate(self, where: str) -> None:
        if self.remove not in REMOVE_SIDES:
            raise _fail(f"{where}.remove", f"must be one of {REMOVE_SIDES}")
        if sum(v * v for v in self.normal_ras) < 1e-12:
            raise _fail(f"{where}.normal_ras", "must not be zero")


@dataclass
class SurfaceResection:
    """Remove the organ on one side of a smooth surface through a grid of control points."""

    name: str
    rows: int
    columns: int
    control_points_ras_mm: list[tuple[float, float, float]]
    remove: str = "positive"
    kind: str = "surface"

    def validate(self, where: str) -> None:
        if self.remove not in REMOVE_SIDES:
            raise _fail(f"{where}.remove", f"must be one of {REMOVE_SIDES}")
        if self.rows < 4 or self.columns < 4:
            raise _fail(where, "a deformable surface needs at least 4×4 control points")
        if len(self.control_points_ras_mm) != self.rows * self.columns:
            raise _fail(
                f"{where}.control_points_ras_mm", f"expected rows × columns = {self.rows * self.columns}"
            )


@dataclass
class MarginResection:
    """Remove the tumour plus a margin of `margin_mm` inside the organ, optionally clipped."""

    name: str
    margin_mm: float
    clip_plane: PlaneResection | None = None
    kind: str = "margin"

    def validate(self, where: str) -> None:
        if not 0.0 <= self.margin_mm <= 50.0:
            raise _fail(f"{where}.margin_mm", "must be between 0 and 50 mm")
        if self.clip_plane is not None:
            self.clip_plane.validate(f"{where}.clip_plane")


Resection = PlaneResection | SurfaceResection | MarginResection


def _plane_from(data: dict, where: str) -> PlaneResection:
    return PlaneResection(
        name=_require(data, "name", where, str),
        origin_ras_mm=_vector(data, "origin_ras_mm", where),
        normal_ras=_vector(data, "normal_ras", where),
        remove=_require(data, "remove", where, str),
    )


def _resection_from(data: dict, where: str) -> Resection:
    kind = _require(data, "kind", where, str)
    if kind == "plane":
        resection: Resection = _plane_from(data, where)
    elif kind == "surface":
        points = _require(data, "control_points_ras_mm", where, list)
        resection = SurfaceResection(
            name=_require(data, "name", where, str),
            rows=_require(data, "rows", where, int),
            columns=_require(data, "columns", where, int),
            control_points_ras_mm=[
                _vector({"p": p}, "p", f"{where}.control_points_ras_mm[{n}]") for n, p in enumerate(points)
            ],
            remove=_require(data, "remove", where, str),
        )
    elif kind == "margin":
        clip = data.get("clip_plane")
        resection = MarginResection(
            name=_require(data, "name", where, str),
            margin_mm=float(_require(data, "margin_mm", where, int | float)),
            clip_plane=_plane_from(clip, f"{where}.clip_plane") if clip is not None else None,
        )
    else:
        raise _fail(f"{where}.kind", f"unknown resection kind {kind!r} (plane, surface or margin)")
    resection.validate(where)
    return resection


# --- the plan ----------------------------------------------------------------------------------


@dataclass
class CaseReference:
    """What the plan is about. UIDs tie it to the source images; references to the structures.

    ``organ`` / ``tumour`` name the structures by key, segment name or segment ID; without them
    ``organ_key`` / ``tumour_key`` (terminology keys) do. ``vessel_tree`` is {branch: parent}; a
    branch is found by its name as a terminology key unless ``branch_segments`` names its
    segment otherwise.
    """

    case_id: str
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    frame_of_reference_uid: str = ""
    segmentation: str = ""  # the segmentation's name or file, with its hash where known
    organ_key: str = ""
    tumour_key: str = ""
    vessel_tree: dict[str, str | None] = field(default_factory=dict)  # branch → parent branch
    organ: StructureRef | None = None
    tumour: StructureRef | None = None
    branch_segments: dict[str, StructureRef] = field(default_factory=dict)  # branch → its segment

    @property
    def organ_ref(self) -> StructureRef | None:
        """How the organ is found: `organ`, else `organ_key` as a key; None when neither is set."""
        return self.organ or (StructureRef.key(self.organ_key) if self.organ_key else None)

    @property
    def tumour_ref(self) -> StructureRef | None:
        return self.tumour or (StructureRef.key(self.tumour_key) if self.tumour_key else None)

    @property
    def organ_field(self) -> str:
        return "plan.case.organ" if self.organ or not self.organ_key else "plan.case.organ_key"

    @property
    def tumour_field(self) -> str:
        return "plan.case.tumour" if self.tumour or not self.tumour_key else "plan.case.tumour_key"

    def branch_ref(self, branch: str) -> StructureRef:
        return self.branch_segments.get(branch) or StructureRef.key(branch)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "case_id": self.case_id,
            "study_instance_uid": self.study_instance_uid,
            "series_instance_uid": self.series_instance_uid,
            "frame_of_reference_uid": self.frame_of_reference_uid,
            "segmentation": self.segmentation,
            "organ_key": self.organ_key,
            "tumour_key": self.tumour_key,
        }
        if self.organ is not None:
            data["organ"] = self.organ.to_json()
        if self.tumour is not None:
            data["tumour"] = self.tumour.to_json()
        tree: dict[str, Any] = {}
        for branch, parent in self.vessel_tree.items():
            ref = self.branch_segments.get(branch)
            tree[branch] = parent if ref is None else {"parent": parent, **ref.to_json()}
        data["vessel_tree"] = tree
        return data

    @classmethod
    def from_json(cls, case: dict) -> CaseReference:
        tree: dict[str, str | None] = {}
        refs: dict[str, StructureRef] = {}
        raw_tree = case.get("vessel_tree", {})
        if not isinstance(raw_tree, dict):
            raise _fail("plan.case.vessel_tree", "expected {branch: parent or null, or {parent, segment}}")
        for branch, value in raw_tree.items():
            where = f"plan.case.vessel_tree[{branch!r}]"
            if value is None or isinstance(value, str):
                tree[branch] = value
            elif isinstance(value, dict):
                parent = value.get("parent")
                if parent is not None and not isinstance(parent, str):
                    raise _fail(f"{where}.parent", "expected a branch name or null")
                tree[branch] = parent
                others = {k: v for k, v in value.items() if k != "parent"}
                if others:
                    refs[branch] = StructureRef.parse(others, where)
            else:
                raise _fail(
                    where, "expected the parent branch (text or null) or {parent, key|name|segment_id}"
                )
        return cls(
            case_id=_require(case, "case_id", "plan.case", str),
            study_instance_uid=case.get("study_instance_uid", ""),
            series_instance_uid=case.get("series_instance_uid", ""),
            frame_of_reference_uid=case.get("frame_of_reference_uid", ""),
            segmentation=case.get("segmentation", ""),
            organ_key=case.get("organ_key", ""),
            tumour_key=case.get("tumour_key", ""),
            vessel_tree=tree,
            organ=StructureRef.parse(case["organ"], "plan.case.organ")
            if case.get("organ") is not None
            else None,
            tumour=StructureRef.parse(case["tumour"], "plan.case.tumour")
            if case.get("tumour") is not None
            else None,
            branch_segments=refs,
        )


@dataclass
class PlanVariant:
    name: str
    description: str = ""
    resections: list[Resection] = field(default_factory=list)
    clamped_branches: list[str] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)
    computed_with: str = ""  # software version that computed `results`
    computed_at: str = ""  # ISO 8601 UTC


@dataclass
class Plan:
    case: CaseReference
    variants: list[PlanVariant] = field(default_factory=list)
    active_variant: str = ""
    schema_version: int = SCHEMA_VERSION
    software: str = f"SlicerVSP {__version__}"
    modified_at: str = ""

    # -- variants --

    def variant(self, name: str | None = None) -> PlanVariant:
        name = name or self.active_variant
        for variant in self.variants:
            if variant.name == name:
                return variant
        raise InputDataError(
            f"the plan has no variant {name!r}.",
            subject="plan",
            fix=f"use one of: {', '.join(v.name for v in self.variants) or '(none yet)'}.",
        )

    def add_variant(self, variant: PlanVariant, *, activate: bool = True) -> PlanVariant:
        if any(v.name == variant.name for v in self.variants):
            raise InputDataError(
                f"a variant named {variant.name!r} exists already.",
                subject="plan",
                fix="choose another name.",
            )
        self.variants.append(variant)
        if activate or not self.active_variant:
            self.active_variant = variant.name
        return variant

    def record_results(self, variant_name: str, results: dict[str, Any]) -> None:
        variant = self.variant(variant_name)
        variant.results = json.loads(json.dumps(results))  # plain JSON values only
        variant.computed_with = f"SlicerVSP {__version__}"
        variant.computed_at = _now()

    # -- JSON --

    def to_dict(self) -> dict[str, Any]:
        self.validate()
        case = self.case.to_json()
        data = json.loads(json.dumps({**asdict(self), "case": case}))  # plain JSON (tuples → lists)
        data["modified_at"] = self.modified_at or _now()
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        version = _require(data, "schema_version", "plan", int)
        if version > SCHEMA_VERSION:
            raise PlanFormatError(
                f"plan schema version {version} is newer than this SlicerVSP understands ({SCHEMA_VERSION}).",
                subject="plan",
                fix="update SlicerVSP.",
            )
        case = _require(data, "case", "plan", dict)
        try:
            reference = CaseReference.from_json(case)
        except PlanFormatError:
            raise
        except InputDataError as error:
            check_schema(data)  # the schema's own message names the field (and the closest one)
            raise PlanFormatError(error.message, subject="plan", fix=error.fix) from None
        try:
            variants = cls._variants_from(data)
        except PlanFormatError:
            # A misspelt field reads as a missing one to the typed parser: name the unknown field
            # and the closest valid name instead, when there is one.
            _check_unknown_variant_fields(data)
            raise
        plan = cls(
            case=reference,
            variants=variants,
            active_variant=data.get("active_variant", variants[0].name if variants else ""),
            schema_version=SCHEMA_VERSION,
            software=data.get("software", ""),
            modified_at=data.get("modified_at", ""),
        )
        plan.validate()
        check_schema(data)
        return plan

    @staticmethod
    def _variants_from(data: dict[str, Any]) -> list[PlanVariant]:
        variants = []
        for n, item in enumerate(_require(data, "variants", "plan", list)):
            where = f"plan.variants[{n}]"
            variants.append(
                PlanVariant(
                    name=_require(item, "name", where, str),
                    description=item.get("description", ""),
                    resections=[
                        _resection_from(r, f"{where}.resections[{m}]")
                        for m, r in enumerate(_require(item, "resections", where, list))
                    ],
                    clamped_branches=list(item.get("clamped_branches", [])),
                    results=dict(item.get("results", {})),
                    computed_with=item.get("computed_with", ""),
                    computed_at=item.get("computed_at", ""),
                )
            )
        return variants

    @classmethod
    def from_json(cls, text: str, *, subject: str = "plan") -> Plan:
        try:
            data = json.loads(text, parse_constant=_not_finite, parse_float=_finite_float)
        except json.JSONDecodeError as error:
            raise PlanFormatError(
                f"is not valid JSON ({error.msg} at line {error.lineno}).",
                subject=subject,
                fix="correct the JSON syntax.",
            ) from None
        except ValueError as error:  # NaN or infinity
            raise PlanFormatError(
                f"{error}: every number in a plan must be finite.",
                subject=subject,
                fix="give finite numbers.",
            ) from None
        return cls.from_dict(data)

    def validate(self) -> None:
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise _fail("plan.variants", "variant names must be unique")
        if self.variants and self.active_variant not in names:
            raise _fail("plan.active_variant", f"{self.active_variant!r} is not a variant")
        for n, variant in enumerate(self.variants):
            for m, resection in enumerate(variant.resections):
                resection.validate(f"plan.variants[{n}].resections[{m}]")


_SCHEMA: dict | None = None


def plan_schema() -> dict:
    """The published plan schema (``data/plan.schema.json``)."""
    global _SCHEMA
    if _SCHEMA is None:
        _SCHEMA = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    return _SCHEMA


def _where(path) -> str:
    text = "plan"
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text


def _check_unknown_variant_fields(data: dict[str, Any]) -> None:
    """Refuse a field that no variant, and no resection of any kind, has (with the closest name)."""

    schema = plan_schema()
    variant_fields = list(schema["properties"]["variants"]["items"]["properties"])
    resection_fields = list(
        dict.fromkeys(
            key for kind in ("plane", "surface", "margin") for key in schema["$defs"][kind]["properties"]
        )
    )
    for n, variant in enumerate(data.get("variants") or []):
        if not isinstance(variant, dict):
            continue
        checks = [(f"plan.variants[{n}]", variant, variant_fields)]
        checks += [
            (f"plan.variants[{n}].resections[{m}]", resection, resection_fields)
            for m, resection in enumerate(variant.get("resections") or [])
            if isinstance(resection, dict)
        ]
        for where, item, allowed in checks:
            _refuse_unknown_fields(where, item, allowed)


def _refuse_unknown_fields(where: str, item: dict, allowed: list[str], *, list_valid: bool = False) -> None:
    """A PlanFormatError naming each field of `item` not in `allowed`, with the closest valid name."""
    import difflib

    extra = [key for key in item if key not in allowed]
    if not extra:
        return
    hints = []
    for key in extra:
        close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.5)
        hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    valid = f"; valid fields: {', '.join(allowed)}" if list_valid else ""
    raise PlanFormatError(
        f"{where}: unknown field(s) {', '.join(hints)}{valid}.",
        subject="plan",
        fix="rename or remove the field (see data/plan.schema.json).",
    )


def check_schema(data: Any) -> None:
    """Validate a plan document against the published schema (jsonschema, draft 2020-12).

    The first error is reported with the field's path; an unknown field names the closest
    valid one.
    """

    import jsonschema

    validator = jsonschema.Draft202012Validator(plan_schema())
    error = jsonschema.exceptions.best_match(validator.iter_errors(data))
    if error is None:
        return
    # An unknown field, also inside a oneOf (a resection of some kind, a structure reference):
    # the fields all the alternatives allow, and the closest to each unknown one.
    candidates = [error, *(error.context or [])]
    unknown = [
        e for e in candidates if e.validator == "additionalProperties" and isinstance(e.instance, dict)
    ]
    if unknown:
        instance = unknown[0].instance
        allowed = list(dict.fromkeys(key for e in unknown for key in e.schema.get("properties", {})))
        where = _where(unknown[0].absolute_path)
        _refuse_unknown_fields(where, instance, allowed, list_valid=True)
        if {"key", "name", "segment_id"} <= set(allowed):
            raise PlanFormatError(
                f"{where}: give exactly one of key, name or segment_id, not {', '.join(instance)}.",
                subject="plan",
                fix='e.g. {"name": "Kidney, left"}.',
            )
    raise PlanFormatError(
        f"{_where(error.absolute_path)}: {error.message} (schema rule {error.validator!r}).",
        subject="plan",
        fix="correct the plan file (see data/plan.schema.json) or make it again in SlicerVSP.",
    )


def _not_finite(text: str):
    raise ValueError(f"{text} is not a number")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{text} is out of range (infinite)")
    return value


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# --- storage: case folder and scene ----------------------------------------------------------


def save_plan_file(plan: Plan, case_dir: str | os.PathLike) -> Path:
    from VSPCoreLib.storage import atomic_path

    path = Path(case_dir) / PLAN_FILE
    with atomic_path(path) as temporary:
        temporary.write_text(plan.to_json(), encoding="utf-8")
    return path


def load_plan_file(path: str | os.PathLike) -> Plan:
    path = Path(path)
    if path.is_dir():
        path = path / PLAN_FILE
    if not path.is_file():
        raise InputDataError("no plan file here.", subject=str(path), fix="save a plan first.")
    return Plan.from_json(path.read_text(encoding="utf-8"), subject=str(path))


def store_plan_in_scene(plan: Plan, scene) -> object:
    """Write the plan into the scene's plan node (created once), so saved scenes carry it."""
    node = find_plan_node(scene)
    text = plan.to_json()  # validates before anything changes
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", PLAN_NODE_NAME)
        node.SetAttribute("ModuleName", "SurgicalPlanning")
        node.SetAttribute("SlicerVSP.Role", "plan")
    node.SetAttribute("SlicerVSP.PlanSchemaVersion", str(SCHEMA_VERSION))
    node.SetParameter(PLAN_PARAMETER, text)
    return node


def find_plan_node(scene):
    nodes = scene.GetNodesByClass("vtkMRMLScriptedModuleNode")
    for index in range(nodes.GetNumberOfItems()):
        node = nodes.GetItemAsObject(index)
        if node.GetAttribute("SlicerVSP.Role") == "plan":
            return node
    return None


def load_plan_from_scene(scene) -> Plan:
    node = find_plan_node(scene)
    if node is None:
        raise InputDataError(
            "the scene holds no SlicerVSP plan.", subject="scene", fix="make or load a plan."
        )
    return Plan.from_json(node.GetParameter(PLAN_PARAMETER), subject=node.GetName())


# --- comparison between variants --------------------------------------------------------------


_ITEM_NAMES = ("branch", "structure_key", "name", "segment")


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    """Dotted paths to scalars; list items are named by their branch/key/name (else index),
    and lists of plain values become one comma-separated cell."""
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), item, out)
    elif isinstance(value, list):
        if all(isinstance(item, int | float | str | bool) for item in value):
            out[prefix] = ", ".join(str(item) for item in value)
            return
        for index, item in enumerate(value):
            label = next(
                (str(item[k]) for k in _ITEM_NAMES if isinstance(item, dict) and item.get(k)), str(index)
            )
            _flatten(f"{prefix}[{label}]", item, out)
    elif isinstance(value, int | float | str | bool) or value is None:
        out[prefix] = value


def comparison_rows(plan: Plan, metrics: list[str] | None = None) -> list[dict[str, Any]]:
    """One row per metric (dotted path into the results), one column per variant.

    Without `metrics`, every scalar result any variant has is compared.
    """
    flat = {}
    for variant in plan.variants:
        values: dict[str, Any] = {}
        _flatten("", variant.results, values)
        flat[variant.name] = values
    if metrics is None:
        metrics = sorted({key for values in flat.values() for key in values})
    return [{"metric": metric, **{name: flat[name].get(metric) for name in flat}} for metric in metrics]


def comparison_table_node(plan: Plan, scene, metrics: list[str] | None = None, name: str = "Plan comparison"):
    """The comparison as a `vtkMRMLTableNode` named `name` (reused when it exists): text cells,
    one row per metric (its name carries the unit), one column per variant."""
    import vtk

    rows = comparison_rows(plan, metrics)
    table_node = scene.GetFirstNode(name, "vtkMRMLTableNode")
    if table_node is None:
        table_node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    table = table_node.GetTable()
    table.Initialize()  # the same node is refilled when the plan is recomputed
    for column in ["metric", *[v.name for v in plan.variants]]:
        array = vtk.vtkStringArray()
        array.SetName(column)
        table.AddColumn(array)
    for row in rows:
        table.InsertNextBlankRow()
        index = table.GetNumberOfRows() - 1
        for column_index, column in enumerate(["metric", *[v.name for v in plan.variants]]):
            value = row.get(column)
            text = "" if value is None else (f"{value:.4g}" if isinstance(value, float) else str(value))
            table.SetValue(index, column_index, vtk.vtkVariant(text))
    table_node.Modified()
    return table_node
