#!/usr/bin/env bash
# Set up SlicerVSP for headless use and for its tests: Debian packages (when run as root on
# Debian/Ubuntu), a virtual environment in .venv and the three Lib packages installed editable.
# Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: dicom3tools (dciodvfy validates the DICOM objects we write), Mesa for
# offscreen rendering. Missing ones only, so that a prepared machine does not wait on apt.
APT_PACKAGES=(dicom3tools libgl1 libegl1 libosmesa6)
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
echo "setup: done. Try: .venv/bin/vsp --help"
