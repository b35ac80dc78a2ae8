"""What differs between the highdicom/pydicom versions SlicerVSP runs on: the latest (the main
venv) and the ones Slicer 5.12 bundles (highdicom 0.27.0, pydicom 3.0.2: .venv-slicer512, where
Testing/run_tests.sh runs this file with the other DICOM suites).

highdicom 0.28 added the ``specific_character_set`` argument; 0.27.0 has none and writes no
Specific Character Set, so a non-ASCII segment name must still come back intact."""

from __future__ import annotations

import inspect
from importlib.metadata import version

import pydicom
import pytest
from packaging.version import Version

from CasePortalConnectorLib.dicom_objects import export_seg, import_seg
from CasePortalConnectorLib.dicom_objects.seg import _highdicom_takes_character_set
from SurgicalPlanningLib.sample_case import create_sample_case, load_sample_case
from VSPCoreLib.app import VSPApplication


def test_the_character_set_path_matches_the_installed_highdicom():
    import highdicom

    takes = "specific_character_set" in inspect.signature(highdicom.base.SOPClass.__init__).parameters
    assert _highdicom_takes_character_set() is takes
    assert takes is (Version(version("highdicom")) >= Version("0.28"))


@pytest.mark.parametrize(
    ("name", "source_charset", "expected"),
    [
        ("Tumör links", "ISO_IR 100", "ISO_IR 100"),  # Latin-1 source: its character set is kept
        ("Tumör – links", None, "ISO_IR 192"),  # no source character set: UTF-8 for our text
        ("Tumour left", None, None),  # plain ASCII needs none
    ],
)
def test_non_ascii_segment_names_round_trip(tmp_path, name, source_charset, expected):
    case = create_sample_case(tmp_path / "case", shape=(64, 64, 24), seed=1)
    sources = sorted(case.dicom_dir.glob("*.dcm"))
    datasets = [pydicom.dcmread(path) for path in sources]
    for dataset in datasets:
        if source_charset is None:
            if "SpecificCharacterSet" in dataset:
                del dataset.SpecificCharacterSet
        else:
            dataset.SpecificCharacterSet = source_charset
    app = VSPApplication.create_headless()
    loaded = load_sample_case(app, case.case_dir)
    segmentation = loaded.segmentation_node.GetSegmentation()
    tumour_id = next(
        segmentation.GetNthSegmentID(n)
        for n in range(segmentation.GetNumberOfSegments())
        if "umour" in segmentation.GetNthSegment(n).GetName()
    )
    segmentation.GetSegment(tumour_id).SetName(name)

    out = export_seg(loaded.segmentation_node, datasets, tmp_path / "seg.dcm", segment_ids=[tumour_id])
    written = pydicom.dcmread(out)
    assert (written.get("SpecificCharacterSet") or None) == expected
    assert written.SegmentSequence[0].SegmentLabel == name

    node = import_seg(app.scene, out)
    names = [
        node.GetSegmentation().GetNthSegment(n).GetName()
        for n in range(node.GetSegmentation().GetNumberOfSegments())
    ]
    assert names == [name]


def test_this_environment_satisfies_the_slicer_requirements():
    """Here and in .venv-slicer512 (Slicer 5.12's pinned pydicom/highdicom/dicomweb-client)
    what VSPCore.ensurePythonRequirements checks is met, so it would install nothing."""
    from VSPCoreLib.requirements import unmet_requirements

    assert unmet_requirements() == []
