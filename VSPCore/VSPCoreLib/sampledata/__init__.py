"""The synthetic sample case (a contrast CT phantom with ground truth), apart from product code.

`phantom` generates the volume, label map and perfusion territories; `dicom_writer` writes it as
a CT DICOM series (with the awkward variants real scanners produce) and as NRRD.
"""
