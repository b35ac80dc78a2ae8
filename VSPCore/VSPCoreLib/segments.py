"""Segments by name: one look-up for every command and recipe that takes a segment name.

A name must pick exactly one segment. Several segments with the same name (two "Rib, left" from
an older import, say) are an error listing them, never a silent pick; a name that matches
nothing lists the segments there are.
"""

from __future__ import annotations

from .errors import InputDataError


class AmbiguousSegmentError(InputDataError):
    """A segment name that several segments carry."""


class SegmentNotFoundError(InputDataError):
    """A segment name that no segment carries."""


def _names(segmentation_node) -> list[tuple[str, str]]:
    segmentation = segmentation_node.GetSegmentation()
    return [
        (segmentation.GetNthSegmentID(n), segmentation.GetNthSegment(n).GetName() or "")
        for n in range(segmentation.GetNumberOfSegments())
    ]


def _folded(text: str) -> str:
    return " ".join(text.split()).casefold()


def find_segment(segmentation_node, name: str, *, subject: str | None = None) -> str:
    """The ID of the one segment called ``name``.

    The name is compared exactly first, then without regard to case and repeated blanks; a
    segment ID is accepted too. Several matches are an InputDataError listing them (with their
    IDs); no match is one listing the segment names there are. ``subject`` names the input in
    the message (default: the node's name).
    """
    subject = subject or segmentation_node.GetName() or "segmentation"
    segments = _names(segmentation_node)
    name = str(name)
    exact = [(sid, n) for sid, n in segments if n == name]
    matches = exact or [(sid, n) for sid, n in segments if _folded(n) == _folded(name)]
    if len(matches) == 1:
        return matches[0][0]
    if len(matches) > 1:
        listed = "; ".join(f"{n!r} (ID {sid})" for sid, n in matches)
        raise AmbiguousSegmentError(
            f"has {len(matches)} segments named {name!r}: {listed}.",
            subject=subject,
            fix="rename the segments so that each name is unique, or give the segment ID.",
        )
    if segmentation_node.GetSegmentation().GetSegment(name) is not None:
        return name  # an ID
    raise SegmentNotFoundError(
        f"has no segment named {name!r}.",
        subject=subject,
        fix=f"use one of: {', '.join(repr(n) for _, n in segments) or '(no segments)'}.",
    )


def find_segments(segmentation_node, names, *, subject: str | None = None) -> list[str]:
    """The IDs of the segments called ``names``, in order (each as :func:`find_segment`)."""
    return [find_segment(segmentation_node, n, subject=subject) for n in names]
