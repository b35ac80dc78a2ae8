"""Segmentation recipes: a list of tool steps run in one edit session (batch and `vsp segment`).

A step is a JSON object: `{"tool": "margin", "segment": "Renal tumour, left", "margin_mm": 5}`.
Its other keys are the tool function's own parameters (units in their names), checked before
anything runs against the recipe's JSON Schema (`data/recipe.schema.json`: types, ranges, no
NaN or infinity) and the function's signature, so a misspelt parameter fails with a message
that names the step and the closest valid name, and a wrong type names the step and field. Segments are given by name or ID;
points as `[label, [R, A, S]]`; an ROI as two RAS corners `[[R, A, S], [R, A, S]]`.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from VSPCoreLib.errors import InputDataError
from VSPCoreLib.progress import ProgressCallback, report, scaled

from . import grow, islands, logical, morphology, threshold, vessels
from .editing import EditSession

TOOLS: dict[str, Callable] = {
    "threshold": threshold.threshold,
    "grow-from-seeds": grow.grow_from_seeds,
    "keep-largest-island": islands.keep_largest_island,
    "remove-small-islands": islands.remove_small_islands,
    "split-islands": islands.split_islands,
    "smooth": morphology.smooth,
    "joint-smooth": morphology.joint_smooth,
    "margin": morphology.margin,
    "hollow": morphology.hollow,
    "fill-holes": morphology.fill_holes,
    "union": logical.union,
    "subtract": logical.subtract,
    "intersect": logical.intersect,
    "invert": logical.invert,
    "copy": logical.copy,
    "clear": logical.clear,
    "add-segment": None,  # handled by the session: {"tool": "add-segment", "name": ..., "color": [r, g, b]}
    "vessel-connected-to-seed": vessels.connected_to_seed,
    "vessel-split-tree": vessels.split_tree,
}


@dataclass
class StepOutcome:
    tool: str
    arguments: dict
    summary: str


def _parameters(function: Callable) -> list[str]:
    return [name for name in inspect.signature(function).parameters if name not in ("session", "progress")]


SCHEMA_FILE = Path(__file__).resolve().parent.parent / "data" / "recipe.schema.json"


@functools.lru_cache(maxsize=1)
def recipe_schema() -> dict:
    """The recipe's JSON Schema (draft 2020-12), shipped as package data."""
    return json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))


def _closest(name: str, choices) -> str:
    match = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.6)
    return f" Did you mean {match[0]!r}?" if match else ""


def _non_finite(value, path: str = "") -> str | None:
    """The path of the first NaN or infinity inside a JSON value, or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return path or "value"
    if isinstance(value, dict):
        for key, item in value.items():
            found = _non_finite(item, f"{path}.{key}" if path else str(key))
            if found:
                return found
    if isinstance(value, list):
        for n, item in enumerate(value):
            found = _non_finite(item, f"{path}[{n}]")
            if found:
                return found
    return None


def _check_against_schema(name: str, arguments: dict, where: str, subject: str) -> None:
    """Unknown keys (with the closest valid one), NaN/infinity, then types and ranges."""
    import jsonschema

    schema = recipe_schema()
    definition = schema["$defs"][name]
    known = [key for key in definition["properties"] if key != "tool"]
    for key in arguments:
        if key not in definition["properties"]:
            raise InputDataError(
                f"{where} ({name}): unknown parameter {key!r}.{_closest(key, known)}",
                subject=subject,
                fix=f"{name} takes: {', '.join(known) or 'no parameters'}.",
            )
    bad = _non_finite(arguments)
    if bad:
        raise InputDataError(
            f"{where} ({name}): {bad} is not a finite number (NaN or infinity).",
            subject=subject,
            fix=f"give {bad.split('.')[0].split('[')[0]} as a finite number.",
        )
    validator = jsonschema.Draft202012Validator({**definition, "$defs": schema["$defs"]})
    errors = sorted(validator.iter_errors({"tool": name, **arguments}), key=lambda e: list(e.absolute_path))
    if errors:
        error = errors[0]
        field = ".".join(str(p) for p in error.absolute_path) or "(the step)"
        raise InputDataError(
            f"{where} ({name}): field {field}: {error.message}.",
            subject=subject,
            fix=f"correct {field} (units are in the name: mm, mm3, HU).",
        )


def check_step(step: dict, index: int, subject: str = "recipe") -> tuple[str, dict]:
    """The tool name and its arguments, or a clear error naming the step."""
    where = f"step {index + 1}"
    if not isinstance(step, dict) or "tool" not in step:
        raise InputDataError(
            f"{where} has no 'tool'.", subject=subject, fix=f"use one of: {', '.join(TOOLS)}."
        )
    name = step["tool"]
    arguments = {key: value for key, value in step.items() if key != "tool"}
    if not isinstance(name, str) or name not in TOOLS:
        raise InputDataError(
            f"{where}: unknown tool {name!r}.{_closest(name, TOOLS)}",
            subject=subject,
            fix=f"use one of: {', '.join(TOOLS)}.",
        )
    _check_against_schema(name, arguments, where, subject)
    if name == "add-segment":
        if set(arguments) - {"name", "color"} or "name" not in arguments:
            raise InputDataError(f"{where}: add-segment takes 'name' and optional 'color'.", subject=subject)
        return name, arguments
    function = TOOLS[name]
    try:
        inspect.signature(function).bind(None, **arguments)
    except TypeError as error:
        raise InputDataError(
            f"{where} ({name}): {error}.",
            subject=subject,
            fix=f"{name} takes: {', '.join(_parameters(function))}.",
        ) from None
    return name, arguments


def load_recipe(path: str | os.PathLike) -> list[dict]:
    path = Path(path)
    if path.is_dir():
        raise InputDataError(
            "is a folder, not a recipe file.", subject=str(path), fix="give the recipe's .json file."
        )
    try:
        steps = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputDataError("no recipe file here.", subject=str(path), fix="check the path.") from None
    except (UnicodeDecodeError, PermissionError) as error:
        raise InputDataError(
            f"cannot be read as text ({type(error).__name__}).",
            subject=str(path),
            fix="give a JSON recipe file.",
        ) from None
    except json.JSONDecodeError as error:
        raise InputDataError(
            f"is not valid JSON ({error.msg}, line {error.lineno}).",
            subject=str(path),
            fix="correct the JSON (a list of steps).",
        ) from None
    if isinstance(steps, dict):
        extra = set(steps) - {"steps"}
        if extra:
            raise InputDataError(
                f"unknown key(s) {', '.join(map(repr, sorted(extra)))} in the recipe.{_closest(min(extra), ['steps'])}",
                subject=str(path),
                fix='a recipe is a list of steps or {"steps": [...]}.',
            )
        steps = steps.get("steps")
    if not isinstance(steps, list):
        raise InputDataError(
            'a recipe is a list of steps (or {"steps": [...]}).',
            subject=str(path),
            fix="wrap the steps in a list.",
        )
    return steps


def run_recipe(
    session: EditSession, steps: Sequence[dict], *, progress: ProgressCallback | None = None
) -> list[StepOutcome]:
    """Run the steps in order; every step is checked before the first one runs.

    Each step is one undoable operation of the session; if a step fails, it is rolled back and
    the error names the step (earlier steps stay applied and can be undone).
    """
    checked = [check_step(step, index) for index, step in enumerate(steps)]
    outcomes = []
    for index, (name, arguments) in enumerate(checked):
        step_progress = scaled(progress, index / len(checked), (index + 1) / len(checked))
        report(step_progress, 0.0, f"step {index + 1}/{len(checked)}: {name}")
        try:
            if name == "add-segment":
                with session.operation("add segment"):  # one undo step, like every tool
                    segment_id = session.add_segment(arguments["name"], color=arguments.get("color"))
                result = f"added segment {arguments['name']!r} ({segment_id})"
            else:
                result = TOOLS[name](session, **arguments, progress=step_progress)
        except InputDataError as error:
            raise InputDataError(
                f"step {index + 1} ({name}) failed: {error.message}", subject=error.subject, fix=error.fix
            ) from error
        outcomes.append(StepOutcome(name, arguments, _summary(result)))
    report(progress, 1.0, "recipe done")
    return outcomes


def _summary(result) -> str:
    """A one-line account of a tool's result: its scalar fields (counts, volumes, thresholds)."""
    if isinstance(result, str):
        return result
    if isinstance(result, list):
        return "; ".join(_summary(item) for item in result)
    if dataclasses.is_dataclass(result):
        parts = []
        for item in dataclasses.fields(result):
            value = getattr(result, item.name)
            if isinstance(value, bool | int | float | str) or (
                isinstance(value, dict) and all(isinstance(v, int | float) for v in value.values())
            ):
                parts.append(
                    f"{item.name}={value:.4g}" if isinstance(value, float) else f"{item.name}={value}"
                )
        return ", ".join(parts)
    return "done"
