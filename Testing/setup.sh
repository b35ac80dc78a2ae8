#!/usr/bin/env bash
# Set up SlicerVSP for headless use and for its tests: Debian packages (when run as root on
# Debian/Ubuntu), a virtual environment in .venv and the Lib packages installed editable.
# Safe to run again: it installs only what is missing.
#
# --with-slicer512 also makes .venv-slicer512: the same install on the minimum Slicer version
# (slicer-core 5.12.4.0 and the pydicom, highdicom and dicomweb-client versions Slicer 5.12
# bundles, pinned in Testing/constraints-slicer-5.12.txt). Testing/run_tests.sh runs the DICOM
# suites in it. It is made again only when the constraints or pyproject.toml change (their hash
# is kept in .venv-slicer512/setup.sha256).
set -euo pipefail
cd "$(dirname "$0")/.."

WITH_SLICER512=0
for argument in "$@"; do
  case "$argument" in
    --with-slicer512) WITH_SLICER512=1 ;;
    *) echo "setup: unknown option $argument (known: --with-slicer512)" >&2; exit 2 ;;
  esac
done

# Debian packages: dicom3tools (dciodvfy validates the DICOM objects we write), Orthanc and its
# DICOMweb plugin (the store tests start their own on 127.0.0.1), Mesa for offscreen rendering,
# PrusaSlicer and ADMesh (print preparation: slicing and STL checks). Missing ones only, so that
# a prepared machine does not wait on apt.
APT_PACKAGES=(dicom3tools libgl1 libegl1 libosmesa6 orthanc orthanc-dicomweb prusa-slicer admesh)
missing=()
for package in "${APT_PACKAGES[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "setup: missing Debian packages (${missing[*]}); install them as root. Tests that need them fail." >&2
  fi
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"

if [ "$WITH_SLICER512" = 1 ]; then
  CONSTRAINTS_512=Testing/constraints-slicer-5.12.txt
  stamp=$(cat "$CONSTRAINTS_512" pyproject.toml | sha256sum | cut -d" " -f1)
  if [ ! -x .venv-slicer512/bin/python ] || [ "$(cat .venv-slicer512/setup.sha256 2>/dev/null)" != "$stamp" ]; then
    echo "setup: creating .venv-slicer512 (Slicer 5.12: $(grep -v '^#' "$CONSTRAINTS_512" | tr '\n' ' '))"
    rm -rf .venv-slicer512
    "$PYTHON" -m venv .venv-slicer512
    .venv-slicer512/bin/python -m pip install -q --disable-pip-version-check -c "$CONSTRAINTS_512" \
      -e ".[test]" dicomweb-client
    # Written last: an interrupted install is redone next time.
    echo "$stamp" >.venv-slicer512/setup.sha256
  fi
fi
# The MONAI Label server for the service tests, in its own venv (.venv-monailabel: it pins
# pydicom 2 and numpy < 2). Cached: made again only when its recipe changes (a clean install
# took 260 s wall here on a busy 2-core machine, 49 s of CPU). VSP_NO_MONAILABEL=1 skips it.
if [ "${VSP_NO_MONAILABEL:-0}" != 1 ]; then
  bash Testing/monailabel/setup_monailabel.sh
fi
echo "setup: done. Try: .venv/bin/vsp --help"
