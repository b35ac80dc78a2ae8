"""Segmentation recipes: a list of tool steps run in one edit session (batch and `vsp segment`).

A step is a JSON object: `{"tool": "margin", "segment": "Renal tumour, left", "margin_mm": 5}`.
Its other keys are the tool function's own parameters (units in their names), checked against
the function's signature before anything runs, so a misspelt parameter fails with a message
that names the step and lists the parameters the tool takes. Segments are given by name or ID;
points as `[label, [R, A, S]]`; an ROI as two RAS corners `[[R, A, S], [R, A, S]]`.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
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


def check_step(step: dict, index: int) -> tuple[str, dict]:
    """The tool name and its arguments, or a clear error naming the step."""
    where = f"step {index + 1}"
    if not isinstance(step, dict) or "tool" not in step:
        raise InputDataError(
            f"{where} has no 'tool'.", subject="recipe", fix=f"use one of: {', '.join(TOOLS)}."
        )
    name = step["tool"]
    arguments = {key: value for key, value in step.items() if key != "tool"}
    if name not in TOOLS:
        raise InputDataError(
            f"{where}: unknown tool {name!r}.", subject="recipe", fix=f"use one of: {', '.join(TOOLS)}."
        )
    if name == "add-segment":
        if set(arguments) - {"name", "color"} or "name" not in arguments:
            raise InputDataError(f"{where}: add-segment takes 'name' and optional 'color'.", subject="recipe")
        return name, arguments
    function = TOOLS[name]
    try:
        inspect.signature(function).bind(None, **arguments)
    except TypeError as error:
        raise InputDataError(
            f"{where} ({name}): {error}.",
            subject="recipe",
            fix=f"{name} takes: {', '.join(_parameters(function))}.",
        ) from None
    return name, arguments


def load_recipe(path: str | os.PathLike) -> list[dict]:
    path = Path(path)
    try:
        steps = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputDataError("no recipe file here.", subject=str(path), fix="check the path.") from None
    except json.JSONDecodeError as error:
        raise InputDataError(
            f"is not valid JSON ({error.msg}, line {error.lineno}).", subject=str(path)
        ) from None
    if isinstance(steps, dict):
        steps = steps.get("steps")
    if not isinstance(steps, list):
        raise InputDataError('a recipe is a list of steps (or {"steps": [...]}).', subject=str(path))
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
