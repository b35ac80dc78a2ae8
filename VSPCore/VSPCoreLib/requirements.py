"""Which Python requirements the running interpreter does not satisfy.

Used inside Slicer where ``slicer.packaging.pip_ensure`` is missing (VSPCore's
``ensurePythonRequirements``), and by the tests to check a virtual environment against
``VSPCore/Resources/requirements.txt``. Standard library and ``packaging`` only.
"""

from __future__ import annotations

import os
from importlib import metadata
from pathlib import Path

#: The requirements file the Slicer modules ensure (installed with the VSPCore module).
REQUIREMENTS_FILE = Path(__file__).resolve().parents[1] / "Resources" / "requirements.txt"


def read_requirements(path: str | os.PathLike = REQUIREMENTS_FILE) -> list[str]:
    """The requirement lines of a requirements file: comments, blank lines and pip options
    (``-r``, ``--index-url``, ...) left out."""
    lines = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            lines.append(line)
    return lines


def unmet_requirements(path: str | os.PathLike = REQUIREMENTS_FILE) -> list[str]:
    """The requirements of ``path`` that are not installed, or installed in a version outside
    their specifier (pre-releases count as satisfying), in file order."""
    from packaging.requirements import Requirement

    unmet = []
    for line in read_requirements(path):
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        try:
            installed = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            unmet.append(str(requirement))
            continue
        if not requirement.specifier.contains(installed, prereleases=True):
            unmet.append(str(requirement))
    return unmet
