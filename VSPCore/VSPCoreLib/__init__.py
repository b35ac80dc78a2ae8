"""VSPCoreLib: the foundation every SlicerVSP Lib stands on, without Qt.

The headless application and storage (`app`, `storage`), the DICOM importer (`dicom`),
terminology (`terminology`), numpy views of volumes and segments (`arrays`), errors, progress and
safe files (`errors`, `progress`, `files`), and the synthetic sample data (`sampledata`, apart
from product code). `SurgicalPlanningLib`, `PrintPrepLib` and `CasePortalConnectorLib` import it;
it imports none of them.
"""

__version__ = "0.1.0"
