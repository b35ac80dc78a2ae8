"""SurgicalPlanningLib: segmentation, virtual resection planning and the case workflow, without Qt."""

__version__ = "0.1.0"
