"""CasePortalConnectorLib: the hospital store (DICOMweb) and the GPU segmentation service, without Qt."""

__version__ = "0.1.0"
