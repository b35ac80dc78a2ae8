#!/usr/bin/env bash
# The test command: set up (idempotent), lint, then every pytest suite; then the DICOM suites
# again on the minimum Slicer version (.venv-slicer512: slicer-core 5.12.4.0, pydicom 3.0.2,
# highdicom 0.27.0, dicomweb-client 0.61.0, see Testing/constraints-slicer-5.12.txt).
# Extra arguments go to the first pytest run only, and skip the Slicer 5.12 run unless
# VSP_SLICER512=1 is set. Exit status: non-zero when either run fails.
set -euo pipefail
cd "$(dirname "$0")/.."

run_512=0
if [ $# -eq 0 ] || [ "${VSP_SLICER512:-0}" = 1 ]; then
  run_512=1
fi
if [ "$run_512" = 1 ]; then
  bash Testing/setup.sh --with-slicer512
else
  bash Testing/setup.sh
fi
.venv/bin/ruff check .
.venv/bin/ruff format --check .

status=0
.venv/bin/python -m pytest "$@" || status=$?

if [ "$run_512" = 1 ]; then
  # The suites that exercise pydicom and highdicom (those present in this checkout).
  dicom_suites=()
  for suite in test_dicom_series.py test_dicom_seg.py test_dicom_models.py test_dicom_versions.py test_real_scanner.py \
    test_store_client.py test_store_auth.py test_store_outbox.py test_store_cases.py test_deid.py; do
    if [ -f "Testing/$suite" ]; then dicom_suites+=("Testing/$suite"); fi
  done
  echo "== DICOM suites on Slicer 5.12: $(.venv-slicer512/bin/python -c 'from importlib.metadata import version as v; print(", ".join(f"{p} {v(p)}" for p in ("slicer-core", "vtk", "pydicom", "highdicom", "dicomweb-client")))')"
  .venv-slicer512/bin/python -m pytest -p no:cacheprovider "${dicom_suites[@]}" || status=$?
fi
exit "$status"
