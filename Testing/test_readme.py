"""The README's examples are real: its JSON recipe and plan parse with the suite's own checks,
and every command it lists exists in `vsp`."""

from __future__ import annotations

import json
import re

from conftest import REPO

from SurgicalPlanningLib.cli import build_parser
from SurgicalPlanningLib.plan import Plan
from SurgicalPlanningLib.segmentation.recipe import check_step

README = (REPO / "README.md").read_text()


def json_blocks() -> list:
    return [json.loads(block) for block in re.findall(r"```json\n(.*?)```", README, flags=re.S)]


def test_the_recipe_example_passes_the_step_checks():
    [recipe] = [block for block in json_blocks() if isinstance(block, list)]
    for index, step in enumerate(recipe):
        check_step(step, index)
    assert recipe[0]["tool"] == "add-segment"


def test_the_plan_example_parses_and_lists_the_whole_left_arterial_tree():
    from SurgicalPlanningLib.territories import kidney_arterial_tree

    [data] = [block for block in json_blocks() if isinstance(block, dict) and "variants" in block]
    plan = Plan.from_dict(data)
    assert plan.case.vessel_tree == kidney_arterial_tree("left")
    assert [v.name for v in plan.variants] == ["lower pole", "enucleation"]


def test_every_command_in_the_readme_exists():
    commands = set(re.findall(r"^vsp ([a-z-]+)", README, flags=re.M)) - {"--help"}
    parser = build_parser()
    available = set(parser._subparsers._group_actions[0].choices)
    assert commands and commands <= available, commands - available
