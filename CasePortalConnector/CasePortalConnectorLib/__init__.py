"""CasePortalConnectorLib: the hospital store (DICOMweb) and the GPU segmentation service, without Qt."""

from VSPCoreLib import __version__  # noqa: F401 (one version for the suite)
