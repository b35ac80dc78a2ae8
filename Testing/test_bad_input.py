"""Bad input to every `vsp` command: a user error is exit 2 with a message that names the input
and says how to fix it, never exit 3 (a bug), and it changes and leaves nothing behind.

One table of cases. Each runs `vsp` with a private working folder and TMPDIR and asserts:
- the exit code (2 for user errors; 0 for the rows that check clean JSON on success);
- stderr names the input (the `names` text) and carries a fix ("Fix:");
- with --json, stdout is empty or parses as JSON;
- every input file's hash is unchanged;
- nothing was left in the working folder or TMPDIR beyond the expected output.
Rows whose fix belongs to another branch are marked xfail(strict=True) with the branch named.
Rows marked `sub` run in a subprocess (stdout/JSON cases, where the process boundary matters);
the others call `cli.main` in this process (the same code, without paying Slicer's import again).
To add a command (e.g. `import-labels`), add its rows in its own section of CASES.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from SurgicalPlanningLib import cli


@dataclass
class Case:
    id: str
    argv: list[
        str
    ]  # placeholders: {dicom} {ct} {seg} {mrb} {plan} {bad} (bad-input folder) {out} (case output folder)
    names: str  # text stderr must contain (the input at fault)
    code: int = 2
    sub: bool = False  # run in a subprocess
    xfail: str = ""  # "fixed by <topic> branch"
    creates: tuple[str, ...] = ()  # files the case may leave in {out} (successful rows)


def C(*args, **kwargs) -> Case:
    return Case(*args, **kwargs)


STEP_MARGIN = '{"tool": "margin", "segment": "Kidney", "margin_mm": 2}'

CASES: list[Case] = [
    # --- demo ---
    C("demo-negative-seed", ["demo", "--out", "{out}/d", "--size", "small", "--seed", "-1"], "--seed"),
    C("demo-seed-text", ["demo", "--out", "{out}/d", "--seed", "abc"], "--seed"),
    C("demo-seed-huge", ["demo", "--out", "{out}/d", "--seed", "99999999999"], "--seed"),
    C("demo-size-32", ["demo", "--out", "{out}/d", "--size", "32x32x32"], "--size"),
    C("demo-size-two-numbers", ["demo", "--out", "{out}/d", "--size", "64x64"], "--size"),
    C("demo-size-words", ["demo", "--out", "{out}/d", "--size", "huge"], "--size"),
    C("demo-size-too-wide", ["demo", "--out", "{out}/d", "--size", "4000x64x64"], "--size"),
    C("demo-size-too-many-voxels", ["demo", "--out", "{out}/d", "--size", "1024x1024x1000"], "--size"),
    C("demo-out-is-a-file", ["demo", "--out", "{bad}/text.txt", "--size", "small"], "text.txt"),
    C("demo-out-under-a-file", ["demo", "--out", "{bad}/text.txt/demo", "--size", "small"], "text.txt"),
    C("demo-out-foreign-folder", ["demo", "--out", "{bad}", "--size", "small"], "bad"),
    # --- info ---
    C("info-missing", ["info", "{bad}/missing.nrrd"], "missing.nrrd", sub=True),
    C("info-missing-json", ["info", "{bad}/missing.nrrd", "--json"], "missing.nrrd", sub=True),
    C("info-empty-file", ["info", "{bad}/empty.nrrd"], "empty.nrrd"),
    C("info-text-as-nrrd", ["info", "{bad}/text.nrrd"], "text.nrrd"),
    C("info-unknown-suffix", ["info", "{bad}/text.txt"], "text.txt"),
    C("info-ct-as-seg", ["info", "{bad}/ct_as.seg.nrrd"], "ct_as.seg.nrrd"),
    C("info-json-clean-stdout", ["info", "{ct}", "--json"], "", code=0, sub=True),
    # --- import-dicom ---
    C("import-dicom-missing-folder", ["import-dicom", "{bad}/nowhere", "--out", "{out}/ct.nrrd"], "nowhere"),
    C("import-dicom-no-dicom", ["import-dicom", "{bad}/no_dicom", "--out", "{out}/ct.nrrd"], "no_dicom"),
    C(
        "import-dicom-unknown-series",
        ["import-dicom", "{dicom}", "--series-uid", "1.2.3.4", "--out", "{out}/ct.nrrd"],
        "1.2.3.4",
    ),  # fmt: skip
    C(
        "import-dicom-out-under-a-file",
        ["import-dicom", "{dicom}", "--out", "{bad}/text.txt/ct.nrrd"],
        "text.txt",
    ),
    C("import-dicom-out-unknown-suffix", ["import-dicom", "{dicom}", "--out", "{out}/ct.xyz"], "ct.xyz"),
    C("import-dicom-out-is-a-folder", ["import-dicom", "{dicom}", "--out", "{bad}/no_dicom"], "no_dicom"),
    C(
        "import-dicom-damaged-file",
        ["import-dicom", "{bad}/damaged_dicom", "--out", "{out}/ct.nrrd"],
        "broken.dcm",
    ),  # fmt: skip
    C(
        "import-dicom-non-ct",
        ["import-dicom", "{bad}/seg_only", "--out", "{out}/ct.nrrd"],
        "seg_only",
    ),  # fmt: skip
    C(
        "import-dicom-out-overwrites-input",
        ["import-dicom", "{dicom}", "--out", "{dicom}/ct.nrrd"],
        "ct.nrrd",
    ),  # fmt: skip
    # --- segment ---
    C(
        "segment-recipe-misspelt-key",
        [
            "segment",
            "--volume",
            "{ct}",
            "--recipe",
            "{bad}/recipe_misspelt.json",
            "--out",
            "{out}/s.seg.nrrd",
        ],
        "recipe_misspelt.json",
    ),  # fmt: skip
    C(
        "segment-recipe-nan",
        ["segment", "--volume", "{ct}", "--recipe", "{bad}/recipe_nan.json", "--out", "{out}/s.seg.nrrd"],
        "margin_mm",
    ),  # fmt: skip
    C(
        "segment-recipe-string-number",
        ["segment", "--volume", "{ct}", "--recipe", "{bad}/recipe_string.json", "--out", "{out}/s.seg.nrrd"],
        "step 2",
    ),  # fmt: skip
    C(
        "segment-recipe-negative-size",
        [
            "segment",
            "--volume",
            "{ct}",
            "--recipe",
            "{bad}/recipe_negative.json",
            "--out",
            "{out}/s.seg.nrrd",
        ],
        "min_size_mm3",
    ),  # fmt: skip
    C(
        "segment-recipe-unknown-tool",
        ["segment", "--volume", "{ct}", "--recipe", "{bad}/recipe_tool.json", "--out", "{out}/s.seg.nrrd"],
        "threshhold",
    ),  # fmt: skip
    C(
        "segment-recipe-not-json",
        ["segment", "--volume", "{ct}", "--recipe", "{bad}/text.txt", "--out", "{out}/s.seg.nrrd"],
        "text.txt",
    ),  # fmt: skip
    C(
        "segment-recipe-missing",
        ["segment", "--volume", "{ct}", "--recipe", "{bad}/none.json", "--out", "{out}/s.seg.nrrd"],
        "none.json",
    ),  # fmt: skip
    C(
        "segment-recipe-extra-key",
        ["segment", "--volume", "{ct}", "--recipe", "{bad}/recipe_dict.json", "--out", "{out}/s.seg.nrrd"],
        "stepz",
    ),  # fmt: skip
    C(
        "segment-recipe-a-number",
        ["segment", "--volume", "{ct}", "--recipe", "{bad}/number.json", "--out", "{out}/s.seg.nrrd"],
        "number.json",
    ),  # fmt: skip
    C(
        "segment-recipe-is-folder",
        ["segment", "--volume", "{ct}", "--recipe", "{bad}/no_dicom", "--out", "{out}/s.seg.nrrd"],
        "no_dicom",
    ),  # fmt: skip
    C(
        "segment-step-not-json",
        ["segment", "--volume", "{ct}", "--step", "{margin: 5}", "--out", "{out}/s.seg.nrrd"],
        "--step",
    ),  # fmt: skip
    C("segment-no-steps", ["segment", "--volume", "{ct}", "--out", "{out}/s.seg.nrrd"], "vsp segment"),
    C(
        "segment-step-infinity",
        [
            "segment",
            "--volume",
            "{ct}",
            "--step",
            '{"tool": "margin", "segment": "K", "margin_mm": Infinity}',
            "--out",
            "{out}/s.seg.nrrd",
        ],
        "margin_mm",
    ),  # fmt: skip
    C(
        "segment-step-overflow",
        [
            "segment",
            "--volume",
            "{ct}",
            "--step",
            '{"tool": "margin", "segment": "K", "margin_mm": 1e999}',
            "--out",
            "{out}/s.seg.nrrd",
        ],
        "margin_mm",
    ),  # fmt: skip
    C(
        "segment-step-bad-preset",
        [
            "segment",
            "--volume",
            "{ct}",
            "--step",
            '{"tool": "threshold", "segment": "K", "preset": "bones"}',
            "--out",
            "{out}/s.seg.nrrd",
        ],
        "preset",
    ),  # fmt: skip
    C(
        "segment-step-colour-range",
        [
            "segment",
            "--volume",
            "{ct}",
            "--step",
            '{"tool": "add-segment", "name": "K", "color": [255, 0, 0]}',
            "--out",
            "{out}/s.seg.nrrd",
        ],
        "color",
    ),  # fmt: skip
    C(
        "segment-step-no-tool",
        ["segment", "--volume", "{ct}", "--step", '{"segment": "K"}', "--out", "{out}/s.seg.nrrd"],
        "tool",
    ),  # fmt: skip
    C(
        "segment-volume-missing",
        ["segment", "--volume", "{bad}/nowhere.nrrd", "--step", STEP_MARGIN, "--out", "{out}/s.seg.nrrd"],
        "nowhere.nrrd",
    ),  # fmt: skip
    C(
        "segment-volume-text",
        ["segment", "--volume", "{bad}/text.nrrd", "--step", STEP_MARGIN, "--out", "{out}/s.seg.nrrd"],
        "text.nrrd",
    ),  # fmt: skip
    C(
        "segment-input-ct-as-seg",
        [
            "segment",
            "--volume",
            "{ct}",
            "--input",
            "{bad}/ct_as.seg.nrrd",
            "--step",
            STEP_MARGIN,
            "--out",
            "{out}/s.seg.nrrd",
        ],
        "not a segmentation",
    ),  # fmt: skip
    C(
        "segment-out-under-a-file",
        [
            "segment",
            "--volume",
            "{ct}",
            "--step",
            '{"tool": "add-segment", "name": "K"}',
            "--out",
            "{bad}/text.txt/s.seg.nrrd",
        ],
        "text.txt",
    ),  # fmt: skip
    # --- stats ---
    C("stats-missing-seg", ["stats", "{bad}/none.seg.nrrd"], "none.seg.nrrd"),
    C(
        "stats-ct-as-seg",
        ["stats", "{bad}/ct_as.seg.nrrd"],
        "not a segmentation: it has no segment header fields and",
    ),  # fmt: skip
    C("stats-float-as-seg", ["stats", "{bad}/float_as.seg.nrrd"], "float voxels"),
    C("stats-volume-as-seg", ["stats", "{ct}"], "ct.nrrd"),
    C("stats-unknown-segment", ["stats", "{seg}", "--segment", "Nope"], "Nope"),
    C("stats-json-under-a-file", ["stats", "{seg}", "--json", "{bad}/text.txt/s.json"], "text.txt"),
    C("stats-json-is-a-folder", ["stats", "{seg}", "--json", "{bad}/no_dicom"], "no_dicom"),
    C(
        "stats-volume-other-patient",
        ["stats", "{seg}", "--volume", "{bad}/other_dicom"],
        "other patient",
        sub=True,
    ),  # fmt: skip
    C("stats-volume-missing", ["stats", "{seg}", "--volume", "{bad}/nowhere.nrrd"], "nowhere.nrrd"),
    # --- compare ---
    C(
        "compare-missing-b",
        ["compare", "{seg}", "{bad}/none.seg.nrrd", "--segment", "Kidney"],
        "none.seg.nrrd",
    ),
    C(
        "compare-unknown-segment-json",
        ["compare", "{seg}", "{seg}", "--segment", "Nope", "--json"],
        "Nope",
        sub=True,
    ),  # fmt: skip
    C(
        "compare-ct-as-seg",
        ["compare", "{bad}/ct_as.seg.nrrd", "{seg}", "--segment", "Kidney"],
        "not a segmentation",
    ),  # fmt: skip
    C(
        "compare-json-clean-stdout",
        ["compare", "{seg}", "{seg}", "--segment", "Kidney", "--json"],
        "",
        code=0,
        sub=True,
    ),  # fmt: skip
    # --- export-seg ---
    C(
        "export-seg-other-patient",
        ["export-seg", "{seg}", "--dicom", "{bad}/other_dicom", "--out", "{out}/s.dcm"],
        "other patient",
        sub=True,
    ),  # fmt: skip
    C(
        "export-seg-no-dicom",
        ["export-seg", "{seg}", "--dicom", "{bad}/no_dicom", "--out", "{out}/s.dcm"],
        "no_dicom",
    ),  # fmt: skip
    C(
        "export-seg-unknown-segment",
        ["export-seg", "{seg}", "--dicom", "{dicom}", "--segment", "Nope", "--out", "{out}/s.dcm"],
        "Nope",
    ),  # fmt: skip
    C(
        "export-seg-out-under-a-file",
        ["export-seg", "{seg}", "--dicom", "{dicom}", "--out", "{bad}/text.txt/s.dcm"],
        "text.txt",
    ),  # fmt: skip
    C(
        "export-seg-automatic-without-name",
        [
            "export-seg",
            "{seg}",
            "--dicom",
            "{dicom}",
            "--algorithm-type",
            "AUTOMATIC",
            "--out",
            "{out}/s.dcm",
        ],
        "AUTOMATIC",
    ),  # fmt: skip
    C(
        "export-seg-text-as-seg",
        ["export-seg", "{bad}/text.seg.nrrd", "--dicom", "{dicom}", "--out", "{out}/s.dcm"],
        "text.seg.nrrd",
    ),  # fmt: skip
    C(
        "export-seg-ct-as-seg",
        ["export-seg", "{bad}/ct_as.seg.nrrd", "--dicom", "{dicom}", "--out", "{out}/s.dcm"],
        "not a segmentation",
    ),  # fmt: skip
    # --- import-seg ---
    C("import-seg-not-dicom", ["import-seg", "{bad}/text.txt", "--out", "{out}/s.seg.nrrd"], "text.txt"),
    C("import-seg-missing", ["import-seg", "{bad}/none.dcm", "--out", "{out}/s.seg.nrrd"], "none.dcm"),
    C(
        "import-seg-ct-slice",
        ["import-seg", "{bad}/ct_slice.dcm", "--out", "{out}/s.seg.nrrd"],
        "ct_slice.dcm",
    ),
    C(
        "import-seg-reference-other-patient",
        ["import-seg", "{bad}/own.dcm", "--reference", "{bad}/other_dicom", "--out", "{out}/s.seg.nrrd"],
        "other patient",
    ),  # fmt: skip
    C(
        "import-seg-reference-missing",
        ["import-seg", "{bad}/own.dcm", "--reference", "{bad}/nowhere.nrrd", "--out", "{out}/s.seg.nrrd"],
        "nowhere.nrrd",
    ),  # fmt: skip
    C(
        "import-seg-out-under-a-file",
        ["import-seg", "{bad}/own.dcm", "--out", "{bad}/text.txt/s.seg.nrrd"],
        "text.txt",
    ),  # fmt: skip
    # --- plan ---
    C("plan-nan-in-plane", ["plan", "{mrb}", "--plan", "{bad}/plan_nan.json", "--out", "{out}/p"], "NaN"),
    C(
        "plan-infinite-margin",
        ["plan", "{mrb}", "--plan", "{bad}/plan_inf.json", "--out", "{out}/p"],
        "Infinity",
    ),
    C(
        "plan-string-margin",
        ["plan", "{mrb}", "--plan", "{bad}/plan_string.json", "--out", "{out}/p"],
        "margin_mm",
    ),
    C(
        "plan-bogus-segmentation",
        ["plan", "{mrb}", "--plan", "{bad}/plan_bogus_seg.json", "--out", "{out}/p"],
        "No such segmentation",
    ),  # fmt: skip
    C("plan-not-json", ["plan", "{mrb}", "--plan", "{bad}/text.txt", "--out", "{out}/p"], "text.txt"),
    C("plan-missing", ["plan", "{mrb}", "--plan", "{bad}/none.json", "--out", "{out}/p"], "none.json"),
    C("plan-scene-missing", ["plan", "{bad}/none.mrb", "--plan", "{plan}", "--out", "{out}/p"], "none.mrb"),
    C("plan-scene-not-a-scene", ["plan", "{ct}", "--plan", "{plan}", "--out", "{out}/p"], "ct.nrrd"),
    C(
        "plan-spacing-nan",
        ["plan", "{mrb}", "--plan", "{plan}", "--out", "{out}/p", "--spacing-mm", "nan"],
        "--spacing-mm",
    ),  # fmt: skip
    C(
        "plan-spacing-zero",
        ["plan", "{mrb}", "--plan", "{plan}", "--out", "{out}/p", "--spacing-mm", "0"],
        "--spacing-mm",
    ),  # fmt: skip
    C(
        "plan-spacing-text",
        ["plan", "{mrb}", "--plan", "{plan}", "--out", "{out}/p", "--spacing-mm", "fine"],
        "--spacing-mm",
    ),  # fmt: skip
    C("plan-out-is-a-file", ["plan", "{mrb}", "--plan", "{plan}", "--out", "{bad}/text.txt"], "text.txt"),
    C(
        "plan-misspelt-key",
        ["plan", "{mrb}", "--plan", "{bad}/plan_misspelt.json", "--out", "{out}/p"],
        "marginmm",
    ),  # fmt: skip
    C(
        "plan-future-schema",
        ["plan", "{mrb}", "--plan", "{bad}/plan_future.json", "--out", "{out}/p"],
        "schema version",
    ),  # fmt: skip
    # --- import-labels (added by its branch): add its rows here ---
]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): _sha(p) for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory) -> dict[str, Path]:
    import numpy as np
    import pydicom
    import SimpleITK as sitk

    from VSPCoreLib.sampledata.dicom_writer import write_dicom_series
    from VSPCoreLib.sampledata.phantom import generate_phantom

    root = tmp_path_factory.mktemp("bad_input")
    demo = root / "demo"
    assert cli.main(["-q", "demo", "--out", str(demo), "--size", "small"]) == 0
    dicom = demo / "case" / "dicom"
    ct = demo / "case" / "nrrd" / "ct.nrrd"
    seg = root / "kidney.seg.nrrd"
    assert cli.main(["-q", "segment", "--volume", str(dicom), "--out", str(seg), "--step", '{"tool": "add-segment", "name": "Kidney"}', "--step", '{"tool": "threshold", "segment": "Kidney", "preset": "enhanced_parenchyma", "roi": [[-110, -80, -50], [-38, -12, 75]]}']) == 0  # fmt: skip
    bad = root / "bad"
    bad.mkdir()
    (bad / "text.txt").write_text("not a medical file\n")
    (bad / "text.nrrd").write_text("hello\n")
    (bad / "text.seg.nrrd").write_text("hello\n")
    (bad / "empty.nrrd").write_bytes(b"")
    (bad / "number.json").write_text("42")
    (bad / "no_dicom").mkdir()
    (bad / "no_dicom" / "readme.txt").write_text("no DICOM here\n")
    shutil.copyfile(ct, bad / "ct_as.seg.nrrd")
    image = sitk.ReadImage(str(ct))
    sitk.WriteImage(sitk.Cast(image, sitk.sitkFloat32), str(bad / "float_as.seg.nrrd"))
    # A damaged series: one slice cut short.
    damaged = bad / "damaged_dicom"
    shutil.copytree(dicom, damaged)
    victim = sorted(damaged.iterdir())[3]
    victim.rename(damaged / "broken.dcm")
    (damaged / "broken.dcm").write_bytes((damaged / "broken.dcm").read_bytes()[:3000])
    shutil.copyfile(sorted(dicom.iterdir())[0], bad / "ct_slice.dcm")
    # A second patient's series (other identity and frame of reference, 40 mm to the left).
    import dataclasses

    phantom = generate_phantom((48, 48, 40), seed=5)
    other = dataclasses.replace(
        phantom,
        patient=dataclasses.replace(
            phantom.patient,
            patient_id="OTHER-PATIENT-5",
            study_uid=pydicom.uid.generate_uid(),
            series_uid=pydicom.uid.generate_uid(),
            frame_of_reference_uid=pydicom.uid.generate_uid(),
        ),
        origin_lps=tuple(np.array(phantom.origin_lps) + [40.0, 0.0, 0.0]),
    )
    write_dicom_series(other, bad / "other_dicom")
    assert cli.main(["-q", "export-seg", str(seg), "--dicom", str(dicom), "--out", str(bad / "own.dcm")]) == 0
    (bad / "seg_only").mkdir()
    shutil.copyfile(bad / "own.dcm", bad / "seg_only" / "own.dcm")
    # Recipes.
    add = {"tool": "add-segment", "name": "Kidney"}
    recipes = {
        "recipe_misspelt.json": [add, {"tool": "margin", "segment": "Kidney", "marginmm": 7}],
        "recipe_nan.json": '[{"tool": "margin", "segment": "Kidney", "margin_mm": NaN}]',
        "recipe_string.json": [add, {"tool": "margin", "segment": "Kidney", "margin_mm": "five"}],
        "recipe_negative.json": [
            add,
            {"tool": "remove-small-islands", "segment": "Kidney", "min_size_mm3": -5},
        ],
        "recipe_tool.json": [{"tool": "threshhold", "segment": "Kidney", "preset": "bone"}],
        "recipe_dict.json": {"stepz": [add]},
    }
    for name, content in recipes.items():
        (bad / name).write_text(content if isinstance(content, str) else json.dumps(content))
    # Plans, from the demo's own.
    plan = json.loads((demo / "case" / "plan.json").read_text())
    plane = plan["variants"][0]["resections"][0]
    margin = plan["variants"][1]["resections"][0]
    assert plane["kind"] == "plane" and margin["kind"] == "margin"

    def variant(change) -> str:
        data = json.loads(json.dumps(plan))
        change(data)
        return json.dumps(data)

    text = json.dumps(plan).replace(json.dumps(plane["origin_ras_mm"]), "[NaN, 0, 0]", 1)
    (bad / "plan_nan.json").write_text(text)
    (bad / "plan_inf.json").write_text(
        json.dumps(plan).replace(
            f'"margin_mm": {json.dumps(margin["margin_mm"])}', '"margin_mm": Infinity', 1
        )
    )
    (bad / "plan_string.json").write_text(
        variant(lambda d: d["variants"][1]["resections"][0].__setitem__("margin_mm", "five"))
    )
    (bad / "plan_bogus_seg.json").write_text(
        variant(lambda d: d["case"].__setitem__("segmentation", "No such segmentation"))
    )

    def misspell(d):
        resection = d["variants"][1]["resections"][0]
        resection["marginmm"] = 7
        del resection["margin_mm"]

    (bad / "plan_misspelt.json").write_text(variant(misspell))
    (bad / "plan_future.json").write_text(variant(lambda d: d.__setitem__("schema_version", 99)))
    assert "NaN" in (bad / "plan_nan.json").read_text() and "Infinity" in (bad / "plan_inf.json").read_text()
    return {
        "root": root,
        "dicom": dicom,
        "ct": ct,
        "seg": seg,
        "mrb": demo / "SampleCase.mrb",
        "plan": demo / "case" / "plan.json",
        "bad": bad,
    }


def _argv(case: Case, fixtures: dict[str, Path], out: Path) -> list[str]:
    values = {key: str(value) for key, value in fixtures.items()} | {"out": str(out)}
    argv = []
    for arg in case.argv:
        for key, value in values.items():
            arg = arg.replace("{" + key + "}", value)
        argv.append(arg)
    return argv


def _params():
    for case in CASES:
        marks = [pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail else []
        yield pytest.param(case, id=case.id, marks=marks)


def test_the_table_covers_every_command():
    commands = {case.argv[0] for case in CASES}
    assert commands >= {"demo", "info", "import-dicom", "segment", "stats", "compare", "export-seg", "import-seg", "plan"}  # fmt: skip
    assert len(CASES) >= 60


@pytest.mark.parametrize("case", _params())
def test_bad_input(case: Case, fixtures, tmp_path, capsys, monkeypatch):
    work, tmp, out = tmp_path / "work", tmp_path / "tmp", tmp_path / "out"
    for folder in (work, tmp, out):
        folder.mkdir()
    before = _tree(fixtures["root"])
    argv = _argv(case, fixtures, out)
    if case.sub:
        env = {**os.environ, "TMPDIR": str(tmp)}
        result = subprocess.run(
            [sys.executable, "-m", "SurgicalPlanningLib.cli", "-q", *argv],
            capture_output=True,
            text=True,
            cwd=work,
            env=env,
            timeout=300,
        )
        code, stdout, stderr = result.returncode, result.stdout, result.stderr
    else:
        monkeypatch.chdir(work)
        monkeypatch.setenv("TMPDIR", str(tmp))
        monkeypatch.setattr(tempfile, "tempdir", str(tmp))
        try:
            code = cli.main(["-q", *argv])
        except SystemExit as exit_:  # argparse
            code = exit_.code
        stdout, stderr = capsys.readouterr()
        # An application the error's traceback kept alive removes its cache folder when collected
        # (at the latest when the process exits, as in the subprocess rows).
        gc.collect()
    assert code == case.code, f"exit {code}, stderr: {stderr[-2000:]}"
    if case.code == 2:
        assert case.names in stderr, stderr[-2000:]
        assert "Fix:" in stderr, stderr[-2000:]
        assert "internal error" not in stderr
    if "--json" in argv and "--json" == argv[-1]:  # the flag that prints JSON on stdout
        if case.code == 0 or stdout.strip():
            json.loads(stdout)
    assert _tree(fixtures["root"]) == before, "an input file was changed, added or removed"
    assert list(tmp.iterdir()) == [], "left behind in TMPDIR"
    assert list(work.iterdir()) == [], "left behind in the working folder"
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())  # an empty folder may stay
    assert left == sorted(case.creates), f"left in the output folder: {left}"
