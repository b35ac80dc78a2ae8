"""Outputs never touch inputs nor a user's files; clean machine output; locks, partials and
temporary folders of dead processes (issue #8 §1, §5, §6)."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import slicer.util

from SurgicalPlanningLib.cli import main
from VSPCoreLib import files, storage
from VSPCoreLib.app import VSPApplication

VSP = Path(sys.executable).with_name("vsp")
ADD = '{"tool": "add-segment", "name": "Box"}'


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A small CT (an asymmetric ramp) and a segmentation of it, made by vsp itself."""
    folder = tmp_path_factory.mktemp("inputs")
    app = VSPApplication.create_headless()
    node = app.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
    slicer.util.updateVolumeFromArray(node, np.arange(20 * 24 * 28, dtype=np.int16).reshape(20, 24, 28))
    ct = storage.save_node(node, folder / "ct.nrrd")
    seg = folder / "seg.seg.nrrd"
    step = '{"tool": "threshold", "segment": "Box", "lower_hu": 100, "upper_hu": 5000}'
    assert main(["-q", "segment", "--volume", str(ct), "--step", ADD, "--step", step, "--out", str(seg)]) == 0
    return folder, ct, seg


def refused(capsys, argv: list[str], *protected: Path, expect: str) -> str:
    before = {path: digest(path) for path in protected}
    assert main(["-q", *argv]) == 2
    error = capsys.readouterr().err
    assert expect in error and "Fix:" in error, error
    assert error.count("\n") == 1, error  # one message
    for path, value in before.items():
        assert digest(path) == value, f"{path} changed"
    return error


def test_segment_out_equal_to_its_ct_or_its_input_is_refused(case, capsys, tmp_path):
    _, ct, seg = case
    refused(
        capsys, ["segment", "--volume", str(ct), "--step", ADD, "--out", str(ct)], ct, expect="not '.nrrd'"
    )
    args = ["segment", "--volume", str(ct), "--input", str(seg), "--step", ADD]
    refused(capsys, [*args, "--out", str(seg)], seg, ct, expect="is the input --input")
    # The same file through a symbolic link and through `..` is still the same file.
    link = tmp_path / "link.seg.nrrd"
    link.symlink_to(seg)
    refused(capsys, [*args, "--out", str(link)], seg, expect="is the input --input")
    dotted = seg.parent / ".." / seg.parent.name / seg.name
    refused(capsys, [*args, "--out", str(dotted)], seg, expect="is the input --input")


def test_output_suffix_must_be_what_the_command_writes(case, capsys, tmp_path):
    _, ct, _ = case
    out = tmp_path / "y.txt"
    error = refused(
        capsys, ["segment", "--volume", str(ct), "--step", ADD, "--out", str(out)], ct, expect="'.txt'"
    )
    assert "y.seg.nrrd" in error and not out.exists()
    out = tmp_path / "ct.xyz"
    refused(capsys, ["import-dicom", str(tmp_path), "--out", str(out)], expect="'.xyz'")
    assert not out.exists()


def test_stats_json_over_its_segmentation_is_refused(case, capsys):
    _, ct, seg = case
    refused(capsys, ["stats", str(seg), "--json", str(seg)], seg, expect="'.seg.nrrd'")
    same_name = seg.with_name("seg.json")  # the right suffix, and an input: same file check
    same_name.write_text("[]")
    try:
        refused(capsys, ["stats", str(same_name), "--volume", str(ct), "--json", str(same_name)], same_name, ct,
                expect="is the input")  # fmt: skip
    finally:
        same_name.unlink()


def test_import_seg_over_its_seg_is_refused(case, capsys, tmp_path):
    _, _, seg = case
    dcm = tmp_path / "x.dcm"
    dcm.write_bytes(b"\0" * 128 + b"DICM")
    refused(capsys, ["import-seg", str(dcm), "--out", str(dcm)], dcm, expect="'.dcm'")
    refused(capsys, ["import-seg", str(seg), "--out", str(seg)], seg, expect="is the input SEG")


def test_output_inside_an_input_dicom_folder_is_refused(capsys, tmp_path):
    folder = tmp_path / "dicom"
    folder.mkdir()
    (folder / "1.dcm").write_bytes(b"x")
    refused(capsys, ["import-dicom", str(folder), "--out", str(folder / "ct.nrrd")], folder / "1.dcm",
            expect="lies inside the input folder FOLDER")  # fmt: skip
    assert sorted(p.name for p in folder.iterdir()) == ["1.dcm"]


def test_plan_out_never_replaces_the_input_plan_nor_a_users_file(capsys, tmp_path):
    folder = tmp_path / "case"
    folder.mkdir()
    plan_json = folder / "plan.json"
    plan_json.write_text('{"schema_version": 1}')
    scene = tmp_path / "case.mrb"
    scene.write_bytes(b"PK")
    refused(capsys, ["plan", str(scene), "--plan", str(plan_json), "--out", str(folder)], plan_json,
            expect="holds the input --plan")  # fmt: skip
    refused(capsys, ["plan", str(scene), "--plan", str(folder), "--out", str(folder)], plan_json,
            expect="is the input folder --plan")  # fmt: skip
    out = tmp_path / "out"
    out.mkdir()
    (out / "comparison.csv").write_text("my notes")
    refused(capsys, ["plan", str(scene), "--plan", str(plan_json), "--out", str(out)], out / "comparison.csv",
            expect="comparison.csv, which vsp did not write")  # fmt: skip


def test_two_scenes_in_one_folder_keep_their_own_data(tmp_path):
    first, second = VSPApplication.create_headless(), VSPApplication.create_headless()
    for app, value in ((first, 1), (second, 2)):
        node = app.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
        slicer.util.updateVolumeFromArray(node, np.full((3, 4, 5), value, dtype=np.int16))
    storage.save_scene(first, tmp_path / "one.mrml")
    storage.save_scene(second, tmp_path / "two.mrml")
    assert sorted(p.name for p in (tmp_path / "Data").iterdir()) == [
        ".vsp-written.json",
        "one_CT.nrrd",
        "two_CT.nrrd",
    ]
    # A user's file with the name a scene would take is never replaced: the node gets another.
    user_file = tmp_path / "Data" / "three_CT.nrrd"
    user_file.write_text("a user's file")
    storage.save_scene(second, tmp_path / "three.mrml")
    assert user_file.read_text() == "a user's file"
    for name, value in (("one", 1), ("two", 2), ("three", 2)):
        app = VSPApplication.create_headless()
        storage.load_scene(app, tmp_path / f"{name}.mrml")
        volume = app.scene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
        assert slicer.util.arrayFromVolume(volume).max() == value, name


def test_demo_rerun_keeps_a_users_files(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["-q", "demo", "--out", str(out), "--size", "small"]) == 0
    capsys.readouterr()
    summary = digest(out / "summary.json")
    for relative in ("case/dicom/notes.txt", "scene/Data/mine.nrrd"):
        user_file = out / relative
        user_file.write_text("mine")
        assert main(["-q", "demo", "--out", str(out), "--size", "small", "--seed", "1"]) == 2
        error = capsys.readouterr().err
        assert relative in error and "nothing was changed" in error
        assert user_file.read_text() == "mine" and digest(out / "summary.json") == summary
        user_file.unlink()
    # A demo file the user changed is theirs now: also kept.
    edited = out / "case" / "case.json"
    edited.write_text(edited.read_text() + " ")
    assert main(["-q", "demo", "--out", str(out), "--size", "small", "--seed", "1"]) == 2
    assert "case/case.json" in capsys.readouterr().err


def test_lock_refuses_a_second_run_and_clears_a_dead_ones(tmp_path):
    with files.output_lock(tmp_path, folder=True, command="vsp demo"):
        holder = json.loads((tmp_path / files.LOCK).read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        script = (
            f"from VSPCoreLib import files\nwith files.output_lock({str(tmp_path)!r}, folder=True): pass\n"
        )
        other = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
        assert other.returncode != 0 and f"pid {os.getpid()}" in other.stderr
    assert not (tmp_path / files.LOCK).exists()
    stale = {"pid": dead_pid(), "host": socket.gethostname(), "started": "earlier", "command": "vsp demo"}
    (tmp_path / files.LOCK).write_text(json.dumps(stale))
    with files.output_lock(tmp_path, folder=True):
        assert json.loads((tmp_path / files.LOCK).read_text())["pid"] == os.getpid()
    # Another machine's lock is never broken (its pid means nothing here).
    (tmp_path / files.LOCK).write_text(json.dumps({**stale, "host": "elsewhere"}))
    with pytest.raises(files.OutputError, match="elsewhere"):
        with files.output_lock(tmp_path, folder=True):
            pass


def test_partials_and_temporaries_of_dead_processes_are_cleared(tmp_path):
    host = files.partial_prefix().split("-")[1]
    dead, live = dead_pid(), os.getpid()
    (tmp_path / f".partial-{host}-{dead}-abc").mkdir()
    (tmp_path / f".partial-{host}-{live}-abc").mkdir()
    (tmp_path / f".partial-otherhost-{dead}-abc").mkdir()
    with files.atomic_path(tmp_path / "x.txt") as temporary:
        temporary.write_text("x")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".partial")) == sorted(
        [f".partial-{host}-{live}-abc", f".partial-otherhost-{dead}-abc"]
    )
    (tmp_path / f"vsp-cache-{dead}-abc").mkdir()
    (tmp_path / f"vsp-cache-{dead}-abc" / "ct.nrrd").write_text("patient data")
    (tmp_path / f"vsp-dicom-{live}-abc").mkdir()
    (tmp_path / "vsp-cache-unknown").mkdir()
    files.clear_stale_temporaries(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("vsp")) == [
        "vsp-cache-unknown",
        f"vsp-dicom-{live}-abc",
    ]


@pytest.mark.parametrize(
    "argv",
    [
        ["info", "{zero}", "--json"],
        ["info", "{corrupt}", "--json"],
        ["compare", "{corrupt}", "{corrupt}", "--segment", "Box", "--json"],
    ],  # fmt: skip
    ids=["info-zero-byte", "info-corrupt", "compare-corrupt"],
)
def test_json_output_of_a_broken_input_is_clean(tmp_path, argv):
    zero = tmp_path / "zero.nrrd"
    zero.write_bytes(b"")
    corrupt = tmp_path / "corrupt.seg.nrrd"
    corrupt.write_bytes(b"NRRD0004\ntype: what\n" + bytes(range(256)))
    argv = [a.format(zero=zero, corrupt=corrupt) for a in argv]
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    result = subprocess.run([str(VSP), "-q", *argv], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2
    if result.stdout.strip():
        json.loads(result.stdout)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr  # one message, no VTK/ITK noise
    assert lines[0].startswith(f"vsp {argv[0]}: error: ") and "Fix:" in lines[0]
    assert "disk" not in lines[0]


def test_toolkit_messages_reach_the_debug_log(tmp_path, caplog, capfd):
    import logging

    import vtk

    from VSPCoreLib import toolkit_log

    toolkit_log.install()
    missing = tmp_path / "missing.vtp"
    with caplog.at_level(logging.DEBUG, logger="vsp.toolkit"):
        reader = vtk.vtkXMLPolyDataReader()
        reader.SetFileName(str(missing))
        reader.Update()
    messages = [r.getMessage() for r in caplog.records if r.name == "vsp.toolkit"]
    assert any(m.startswith("VTK error") and "missing.vtp" in m for m in messages), messages
    assert all("\n" not in m for m in messages)
    printed = capfd.readouterr()
    assert "missing.vtp" not in printed.out and "missing.vtp" not in printed.err


def test_plan_comparison_table_columns_never_run_together():
    from SurgicalPlanningLib.cli import _table

    names = ["a very long variant name that goes on and on", "b"]
    rows = [
        {"metric": "resection.remnant_fraction_of_the_whole_organ_percent", names[0]: 12345.678, "b": None}
    ]
    header, line = _table(rows, names).splitlines()
    assert line.split("  ")[0].strip() == rows[0]["metric"]
    cells = [cell for cell in line.split("  ") if cell.strip()]
    assert [c.strip() for c in cells] == [rows[0]["metric"], "12345.68", "-"]
    assert len(header) == len(line)  # columns line up
