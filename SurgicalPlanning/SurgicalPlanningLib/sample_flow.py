"""The sample case flows the Slicer panel, its Sample Data button and scripts share.

- `create_new_sample_case`: the phantom written into a fresh folder of an output folder;
- `sample_phantom_case`: the phantom in a cache folder, generated once and reused;
- `compute_sample_plan`: the sample case's two-variant plan, computed on loaded nodes and saved
  as the case folder's plan.json.

The folder rules are in `case_folders`; the writing and loading in `sample_case`; the plan in
`planning`. No Qt: the module logic calls these and the panel shows the results.
"""

from __future__ import annotations

import os
from pathlib import Path

from VSPCoreLib.errors import VSPError
from VSPCoreLib.progress import ProgressCallback, report, scaled

from .case_folders import (
    DEFAULT_GRID_SIZE,
    cached_case_folder,
    grid_shape,
    new_case_folder,
    read_case_facts,
)


def create_new_sample_case(
    output_directory: str | os.PathLike,
    *,
    grid_size: str = DEFAULT_GRID_SIZE,
    seed: int = 0,
    progress: ProgressCallback | None = None,
):
    """Write the phantom case (DICOM series, NRRD files, case.json) into a new folder of
    ``output_directory`` named after the grid and seed; returns the SampleCase."""
    from .sample_case import create_sample_case

    shape = grid_shape(grid_size)
    case_dir = new_case_folder(output_directory, shape, seed)
    return create_sample_case(case_dir, shape=shape, seed=int(seed), progress=progress)


def sample_phantom_case(
    cache_root: str | os.PathLike,
    *,
    grid_size: str = DEFAULT_GRID_SIZE,
    seed: int = 0,
    progress: ProgressCallback | None = None,
) -> tuple[Path, bool]:
    """The cached phantom's case folder, generated when it is missing or was left incomplete:
    (case folder, True when an existing complete case was reused)."""
    shape = grid_shape(grid_size)
    case_dir, complete = cached_case_folder(cache_root, shape, seed)
    if complete:
        report(progress, 1.0, "using the cached sample case")
        return case_dir, True
    from .sample_case import create_sample_case

    create_sample_case(case_dir, shape=shape, seed=int(seed), progress=progress)
    return case_dir, False


def compute_sample_plan(
    app,
    case_dir: str | os.PathLike,
    segmentation_node,
    volume_node,
    *,
    progress: ProgressCallback | None = None,
):
    """The sample case's plan (lower-pole plane against a 5 mm enucleation) computed on the
    case's loaded nodes and saved as ``case_dir``/plan.json: (Plan with results, plan path)."""
    if segmentation_node is None:
        raise VSPError("No segmentation is selected.", subject="Sample plan", fix="Choose a segmentation.")
    if volume_node is None:
        raise VSPError("No volume is selected.", subject="Sample plan", fix="Choose the source volume (CT).")
    from .plan import save_plan_file
    from .planning import PlanningInputs, compute_plan, sample_plan

    facts = read_case_facts(case_dir)
    plan = sample_plan(facts, volume_node, case_id=f"VSP-PHANTOM-{facts.get('seed', 0)}")
    inputs = PlanningInputs(app, segmentation_node, volume_node)
    compute_plan(inputs, plan, progress=scaled(progress, 0.0, 0.98))
    plan_path = save_plan_file(plan, case_dir)
    report(progress, 1.0, f"plan saved to {plan_path}")
    return plan, plan_path
