"""SurgicalPlanningLib: segmentation, virtual resection planning and the case workflow, without Qt."""

from VSPCoreLib import __version__  # noqa: F401 (one version for the suite)
