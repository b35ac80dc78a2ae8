"""DICOM CT series: scan a folder, check its geometry, decode, resample and load into MRML.

Modules: ``header`` (one file's header), ``scan`` (folders, series grouping), ``geometry``
(sorting, spacing, gaps, tilt), ``decode`` (pixels, rescale to HU), ``resample``, ``series``
(:func:`read_series`) and ``mrml`` (:func:`add_volume_node`, :func:`load_series`).
"""

from .geometry import orientation_code
from .mrml import add_volume_node, load_series
from .scan import FolderScan, SeriesInfo, format_series_table, scan_files, scan_folder, series_summary
from .series import AcquisitionInfo, DicomVolume, read_series, volume_geometry_summary

__all__ = [
    "AcquisitionInfo",
    "DicomVolume",
    "FolderScan",
    "SeriesInfo",
    "add_volume_node",
    "format_series_table",
    "load_series",
    "orientation_code",
    "read_series",
    "scan_files",
    "scan_folder",
    "series_summary",
    "volume_geometry_summary",
]
