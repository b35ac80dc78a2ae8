"""The hospital store over DICOMweb (with Orthanc extras): settings, connection, worklist, download.

- :mod:`.settings`: where the store is, how to authenticate, TLS, timeouts; secrets from a 0600
  file, the OS keyring or a prompt — never from a settings file, a scene or a log.
- :mod:`.client`: :class:`StoreClient`, dicomweb-client over a configured requests Session
  (timeouts, retries, TLS), Orthanc REST extras (metadata, attachments), clear errors.
- :mod:`.worklist`: study search (QIDO-RS), paging, planning states.
- :mod:`.download`: series download into the private cache, resumable, checked, loaded whole.
"""

from .client import StoreClient, StoreNotFoundError, make_session, translate_errors
from .download import (
    DownloadResult,
    IncompleteSeriesError,
    cache_dir,
    cached_files,
    download_series,
    is_complete,
    load_cached_series,
    open_case,
)
from .settings import StoreSettings, load_settings, resolve_secret
from .worklist import STATES, StudyEntry, WorklistPage, WorklistQuery, search_worklist, set_state

__all__ = [
    "STATES",
    "DownloadResult",
    "IncompleteSeriesError",
    "StoreClient",
    "StoreNotFoundError",
    "StoreSettings",
    "StudyEntry",
    "WorklistPage",
    "WorklistQuery",
    "cache_dir",
    "cached_files",
    "download_series",
    "is_complete",
    "load_cached_series",
    "load_settings",
    "make_session",
    "open_case",
    "resolve_secret",
    "search_worklist",
    "set_state",
    "translate_errors",
]
