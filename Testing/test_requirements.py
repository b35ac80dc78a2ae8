"""VSPCoreLib.requirements: the check VSPCore.ensurePythonRequirements falls back on inside
Slicer (and that the tests use to check a virtual environment)."""

from __future__ import annotations

from VSPCoreLib.requirements import REQUIREMENTS_FILE, read_requirements, unmet_requirements


def test_requirement_lines_leave_out_comments_blank_lines_and_options(tmp_path):
    path = tmp_path / "requirements.txt"
    path.write_text(
        "# a comment\n\n-r other.txt\n--index-url https://example.org/simple\n"
        "numpy>=1.24  # trailing comment\n  scipy>=1.10\n"
    )
    assert read_requirements(path) == ["numpy>=1.24", "scipy>=1.10"]


def test_unmet_requirements_are_the_missing_and_the_wrong_versions(tmp_path):
    path = tmp_path / "requirements.txt"
    path.write_text(
        "pytest>=1\n"  # installed and new enough
        "numpy<1\n"  # installed, but too new
        "surely-not-installed-vsp-package>=1\n"  # not installed
        'numpy<1; python_version < "3"\n'  # not for this Python: skipped
        "PyTest>=1,!=0.1\n"  # names are case-insensitive
    )
    assert unmet_requirements(path) == ["numpy<1", "surely-not-installed-vsp-package>=1"]


def test_the_module_requirements_file_is_the_one_installed_with_vspcore():
    assert REQUIREMENTS_FILE.parts[-3:] == ("VSPCore", "Resources", "requirements.txt")
    assert REQUIREMENTS_FILE.is_file()
    names = [line.split(">")[0].split("=")[0].lower() for line in read_requirements()]
    assert {"pydicom", "highdicom", "numpy", "scipy", "simpleitk"} <= set(names)
