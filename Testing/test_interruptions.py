"""Interrupted runs: `vsp demo` killed with SIGTERM and SIGKILL while generating, importing and
saving; each rerun succeeds and nothing of vsp stays in the temporary folder. Two runs into one
folder: one is refused naming the other, the other completes.

Each run is a real `vsp` process with a private TMPDIR. The phase is hit through the test-only
hook VSP_TEST_HOLD (the run pauses at the first progress message containing the text)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

VSP = Path(sys.executable).with_name("vsp")
PHASES = {
    "generating": "Writing DICOM slice 40 of",
    "importing": "Reading slices (",
    "saving": "saving the scene bundle",
}


def _env(tmp: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VSP_TEST")}
    env.update(TMPDIR=str(tmp), **extra)
    return env


def _start(out: Path, tmp: Path, *args, **extra) -> subprocess.Popen:
    return subprocess.Popen(
        [str(VSP), "demo", "--size", "small", "--out", str(out), *args],
        env=_env(tmp, **extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_hold(process: subprocess.Popen, timeout: float = 120) -> list[str]:
    lines = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        lines.append(line)
        if "vsp: test hold at" in line:
            return lines
    process.kill()
    pytest.fail(f"the run never reached its hold: {''.join(lines)}")


def _vsp_leftovers(tmp: Path) -> list[str]:
    return sorted(p.name for p in tmp.iterdir() if p.name.startswith("vsp"))


def _partials(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob(".partial-*"))


@pytest.mark.parametrize("phase", list(PHASES))
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_demo_killed_then_rerun(tmp_path, phase, signum):
    tmp, out = tmp_path / "tmp", tmp_path / "demo"
    tmp.mkdir()
    process = _start(out, tmp, VSP_TEST_HOLD=PHASES[phase])
    _wait_for_hold(process)
    assert _vsp_leftovers(tmp), "while it runs, its cache folder is in TMPDIR"
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    if signum == signal.SIGTERM:
        assert process.returncode == 143
        assert "stopped by SIGTERM" in err and "Traceback" not in err
        # It cleaned up after itself: no partial files, no temporary folders, no lock.
        assert _partials(out) == []
        assert _vsp_leftovers(tmp) == []
        assert not (out / ".vsp-lock").exists()
    else:
        assert process.returncode == -signal.SIGKILL
        assert _vsp_leftovers(tmp), "kill -9 leaves its cache folder (cleared by the next run)"
        assert (out / ".vsp-lock").exists() and _partials(out)
    # Nothing of the interrupted run was moved into place.
    assert not (out / "summary.json").exists()

    rerun = subprocess.run(
        [str(VSP), "-q", "demo", "--size", "small", "--out", str(out)],
        env=_env(tmp),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rerun.returncode == 0, rerun.stderr
    assert _vsp_leftovers(tmp) == []  # the stale ones of the killed run were swept too
    assert _partials(out) == [] and not (out / ".vsp-lock").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["laterality_check"]["tumour_on_patient_left"] is True
    assert len(list((out / "case" / "dicom").iterdir())) == 75


def test_two_runs_into_one_folder(tmp_path):
    from VSPCoreLib.files import foreign_files, read_manifest

    tmp, out = tmp_path / "tmp", tmp_path / "demo"
    tmp.mkdir()
    first = _start(out, tmp, VSP_TEST_HOLD=PHASES["importing"], VSP_TEST_HOLD_S="4")
    _wait_for_hold(first)
    second = subprocess.run(
        [str(VSP), "-q", "demo", "--size", "small", "--out", str(out)],
        env=_env(tmp),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert second.returncode == 2
    assert f"pid {first.pid}" in second.stderr and "in use by another vsp run" in second.stderr
    assert second.stderr.count("\n") == 1  # one message
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    # The folder is the first run's, whole: every file is in its manifest, nothing else.
    assert foreign_files(out) == []
    manifest = read_manifest(out)
    assert len([name for name in manifest if name.startswith("case/dicom/")]) == 75
    assert {"summary.json", "SampleCase.mrb", "scene/SampleCase.mrml", "case/case.json"} <= set(manifest)
    assert not (out / ".vsp-lock").exists() and _vsp_leftovers(tmp) == []
