"""DICOM CT series: scan a folder, check its geometry, decode, resample and load into MRML."""

from .series import (
    AcquisitionInfo,
    DicomVolume,
    FolderScan,
    SeriesInfo,
    add_volume_node,
    format_series_table,
    load_series,
    orientation_code,
    read_series,
    scan_files,
    scan_folder,
    series_summary,
    volume_geometry_summary,
)

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
