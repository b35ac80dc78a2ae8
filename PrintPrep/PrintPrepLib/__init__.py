"""PrintPrepLib: segments to printable, faithful, traceable models, without Qt."""

from VSPCoreLib import __version__  # noqa: F401 (one version for the suite)
