"""DICOM objects for planning results: segmentations (DICOM SEG), 3D models (Encapsulated STL,
OBJ, MTL; modality M3D) and reports (Encapsulated PDF).

The names are loaded on first use, so importing this package does not import pydicom and
highdicom (the Slicer module file may import it at start-up, before the Python requirements are
installed).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AlgorithmInfo": "seg",
    "export_seg": "seg",
    "import_seg": "seg",
    "read_seg_dataset": "seg",
    "parse_terminology_entry": "seg",
    "terminology_entry_from_description": "seg",
    "SEG_STORAGE": "seg",
    "LABELMAP_SEG_STORAGE": "seg",
    "ModelFile": "model",
    "ModelDocument": "model",
    "WrittenModel": "model",
    "export_model_dicom": "model",
    "export_models_dicom": "model",
    "read_model_dicom": "model",
    "MODEL_USAGES": "model",
    "ENCAPSULATED_STL_STORAGE": "model",
    "ENCAPSULATED_OBJ_STORAGE": "model",
    "ENCAPSULATED_MTL_STORAGE": "model",
    "Equipment": "encapsulated",
    "WrittenDocument": "encapsulated",
    "export_pdf_dicom": "encapsulated",
    "ENCAPSULATED_PDF_STORAGE": "encapsulated",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
