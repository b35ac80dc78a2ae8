"""Segmentation on Slicer's engine: segments as arrays, editing tools, statistics, comparison."""
