#!/usr/bin/env bash
# Make the MONAI Label server's own virtual environment, .venv-monailabel, for the service tests.
#
# MONAI Label pins pydicom 2 and numpy < 2, so it never shares the project's .venv. The recipe
# (../shared/REFERENCE.md, "Running a real MONAI Label server here"): a CPU torch first (never a
# CUDA build: torchvision is not installed, torch is held by a constraints file), then monai with
# that constraint, then monailabel without its dependencies, then only what the server imports.
#
# Cached: the venv is made again only when this recipe changes (its hash is kept in
# .venv-monailabel/setup.sha256, written last, so an interrupted install is redone).
# A clean install takes about 70 s on a 2-core machine with the wheels cached.
# Usage: bash Testing/monailabel/setup_monailabel.sh [VENV_DIR]   (default: .venv-monailabel)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${1:-$root/.venv-monailabel}"
PYTHON=${PYTHON:-python3}

TORCH_VERSION=2.13.0
MONAILABEL_VERSION=0.8.5
SERVER_PACKAGES=(fastapi uvicorn pydantic pydantic-settings python-dotenv python-multipart httpx
  schedule timeloop expiringdict expiring_dict cachetools watchdog pynrrd requests requests-toolbelt
  pyyaml filelock passlib pyjwt bcrypt nibabel itk-core==5.4.7 itk-io==5.4.7 SimpleITK pillow psutil
  google-auth girder-client pydicom==2.4.4 pydicom-seg dicomweb-client==0.59.1)

stamp=$( { cat "$0"; "$PYTHON" --version 2>&1; } | sha256sum | cut -d" " -f1)
if [ -x "$venv/bin/monailabel" ] && [ "$(cat "$venv/setup.sha256" 2>/dev/null)" = "$stamp" ]; then
  echo "setup_monailabel: $venv is up to date"
  exit 0
fi

start=$(date +%s)
echo "setup_monailabel: creating $venv (monailabel $MONAILABEL_VERSION, CPU torch $TORCH_VERSION)"
rm -rf "$venv"
"$PYTHON" -m venv "$venv"
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
constraints="$venv/constraints.txt"
printf 'torch==%s\n' "$TORCH_VERSION" >"$constraints"
# The CPU wheel: from pip's find-links where the machine holds it (here /opt/wheels), else set
# TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu so that pip cannot pick a CUDA build.
torch_index=()
if [ -n "${TORCH_CPU_INDEX:-}" ]; then torch_index=(--extra-index-url "$TORCH_CPU_INDEX"); fi
"${pip[@]}" -c "$constraints" "${torch_index[@]}" "torch==$TORCH_VERSION"
"$venv/bin/python" - <<'PY'
import torch
assert not torch.version.cuda, f"a CUDA torch was installed ({torch.version.cuda}); the tests need the CPU build"
PY
"${pip[@]}" -c "$constraints" monai
"${pip[@]}" --no-deps "monailabel==$MONAILABEL_VERSION"
"${pip[@]}" -c "$constraints" "${SERVER_PACKAGES[@]}"
"$venv/bin/python" -c "import monailabel, torch, monai; print('setup_monailabel: monailabel', monailabel.__version__, 'torch', torch.__version__, 'monai', monai.__version__)"
# Written last: an interrupted install is redone next time.
echo "$stamp" >"$venv/setup.sha256"
echo "setup_monailabel: done in $(( $(date +%s) - start )) s"
