"""PrintPrepLib: segments to printable, faithful, traceable models, without Qt."""

__version__ = "0.1.0"
