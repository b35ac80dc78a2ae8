"""Open a case: download a series into the local cache, check it, and load it into a scene.

The cache holds patient data. It is the user's private folder (mode 0700; default
``$XDG_CACHE_HOME/slicervsp/store`` i.e. ``~/.cache/slicervsp/store``, or ``cache_dir`` in the
store settings, ``$VSP_STORE_CACHE``, ``vsp store open --cache DIR``), laid out as
``<cache>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``: every name is a UID we
checked (digits and dots), never a name chosen by the server.

Each instance is fetched with WADO-RS (several in parallel) as the bytes the store sent, parsed, checked (its SOP Instance,
Series and Study UIDs are the requested ones) and written atomically (a temporary name, then a
rename), so a file under its final name is always whole. When every instance the store lists is
present — and their number equals the store's NumberOfSeriesRelatedInstances — a
``series.json`` record is written last; a series folder without it is partial. An interrupted
download resumes: the next run fetches only the missing instances. :func:`load_cached_series`
refuses a partial series.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import stat
import threading
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import pydicom

from VSPCoreLib.files import partial_prefix
from VSPCoreLib.progress import ProgressCallback, report

from ..errors import ConnectorError
from .client import StoreClient
from .worklist import check_uid, get, series_list

log = logging.getLogger(__name__)

RECORD = "series.json"
SUFFIX = ".dcm"


class IncompleteSeriesError(ConnectorError):
    """A cached series that is not whole (a download was interrupted or a file is damaged)."""


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "slicervsp" / "store"


def private_folder(path: str | os.PathLike) -> Path:
    """Create ``path`` (and parents) and make it private to the user (mode 0700)."""
    folder = Path(path).expanduser()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    info = folder.stat()
    if stat.S_IMODE(info.st_mode) & 0o077:
        if info.st_uid != os.getuid():
            raise ConnectorError(
                "The cache folder can be read by other users and belongs to someone else.",
                subject=str(folder),
                fix="Choose a folder of your own (--cache DIR).",
            )
        os.chmod(folder, 0o700)
    return folder


def cache_dir(settings=None, override: str | os.PathLike | None = None) -> Path:
    chosen = override or (settings.cache_dir if settings is not None and settings.cache_dir else None)
    return private_folder(chosen or default_cache_dir())


def series_folder(cache: str | os.PathLike, study_uid: str, series_uid: str) -> Path:
    return Path(cache) / check_uid(study_uid, "Study UID") / check_uid(series_uid, "Series UID")


@dataclasses.dataclass
class DownloadResult:
    folder: Path
    study_uid: str
    series_uid: str
    expected: int
    fetched: int  # instances downloaded by this run
    reused: int  # instances already in the cache
    bytes_fetched: int
    seconds: float
    files: list[Path]

    @property
    def complete(self) -> bool:
        return is_complete(self.folder)

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["folder"] = str(self.folder)
        data["files"] = len(self.files)
        data["complete"] = self.complete
        data["mb_per_s"] = round(self.bytes_fetched / 1e6 / self.seconds, 2) if self.seconds > 0 else None
        return data


def _instance_uids(client: StoreClient, study_uid: str, series_uid: str) -> list[str]:
    uids = [get(item, "SOPInstanceUID") for item in client.search_instances(study_uid, series_uid)]
    uids = [check_uid(uid, f"SOP Instance UID in series {series_uid}") for uid in uids if uid]
    if len(set(uids)) != len(uids):
        raise ConnectorError(
            "The store lists an instance twice.",
            subject=f"Series {series_uid}",
            fix="Report it to the store's admin.",
        )
    return uids


def _expected_count(client: StoreClient, study_uid: str, series_uid: str) -> int | None:
    for series in series_list(client, study_uid):
        if series["series_uid"] == series_uid:
            return series["instances"]
    from .client import StoreNotFoundError

    raise StoreNotFoundError(
        f"The store holds no series {series_uid} in study {study_uid}.",
        subject=client.server,
        fix="Check the UIDs (`vsp store worklist`, then the study's series).",
    )


def _cached_ok(path: Path, sop_uid: str) -> bool:
    """A cached file that parses and carries the expected SOP Instance UID."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
        return str(ds.SOPInstanceUID) == sop_uid
    except Exception:  # noqa: BLE001 (any damage: fetch it again)
        return False


def download_series(
    client: StoreClient,
    study_uid: str,
    series_uid: str,
    cache: str | os.PathLike,
    *,
    workers: int | None = None,
    progress: ProgressCallback | None = None,
) -> DownloadResult:
    """Fetch the series' missing instances into the cache (resuming an interrupted download),
    check them, and write the completeness record. Raises (after keeping what arrived) when the
    store fails; the series is then incomplete and a later call resumes."""
    start = time.monotonic()
    folder = series_folder(private_folder(cache), study_uid, series_uid)
    private_folder(folder)
    expected = _expected_count(client, study_uid, series_uid)
    uids = _instance_uids(client, study_uid, series_uid)
    if expected is not None and expected != len(uids):
        raise ConnectorError(
            f"The store says the series has {expected} instances but lists {len(uids)}.",
            subject=f"Series {series_uid}",
            fix="The store may still be receiving it; try again in a minute.",
        )
    if not uids:
        raise ConnectorError("The series has no instances.", subject=f"Series {series_uid}")
    record = folder / RECORD
    if record.exists():
        record.unlink()  # re-checked below; a series changed in the store must not look whole
    missing = [uid for uid in uids if not _cached_ok(folder / (uid + SUFFIX), uid)]
    reused = len(uids) - len(missing)
    report(progress, 0.0, f"Downloading {len(missing)} of {len(uids)} instances ({reused} cached)")
    counter = {"done": 0, "bytes": 0}
    lock = threading.Lock()

    def fetch(sop_uid: str) -> None:
        data = client.retrieve_instance_bytes(study_uid, series_uid, sop_uid)
        try:
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
            got = (str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID), str(ds.StudyInstanceUID))
        except Exception:  # noqa: BLE001 (whatever the parser says: not a usable instance)
            got = None
        if got is None:
            raise ConnectorError(
                "The store sent an instance that cannot be read as DICOM.",
                subject=f"Instance {sop_uid}",
                fix="Try again; report it to the store's administrator if it persists.",
            )
        if got != (sop_uid, series_uid, study_uid):
            raise ConnectorError(
                "The store sent a different instance than the one requested.",
                subject=f"Instance {sop_uid}",
                fix="Report it to the store's administrator.",
            )
        target = folder / (sop_uid + SUFFIX)
        temporary = folder / f"{partial_prefix()}{sop_uid}{SUFFIX}"
        try:
            temporary.write_bytes(data)
            os.replace(temporary, target)
        finally:
            temporary.unlink(missing_ok=True)
        size = len(data)
        with lock:
            counter["done"] += 1
            counter["bytes"] += size
            done = counter["done"]
        report(progress, 0.95 * done / max(1, len(missing)), f"Downloaded {done}/{len(missing)} instances")

    workers = max(1, workers or client.settings.parallel)
    if missing:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(fetch, uid) for uid in missing]
            finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
            failed = [f for f in futures if f.done() and not f.cancelled() and f.exception() is not None]
            if failed:
                for future in futures:
                    future.cancel()
                raise failed[0].exception()
    files = [folder / (uid + SUFFIX) for uid in uids]
    absent = [path.name for path in files if not path.is_file()]
    if absent:
        raise IncompleteSeriesError(
            f"{len(absent)} of {len(uids)} instances are missing after the download.",
            subject=f"Series {series_uid}",
            fix="Run the download again: it fetches only the missing instances.",
        )
    _write_record(folder, study_uid, series_uid, uids)
    seconds = time.monotonic() - start
    report(progress, 1.0, f"Series complete: {len(uids)} instances ({len(missing)} downloaded)")
    return DownloadResult(
        folder=folder,
        study_uid=study_uid,
        series_uid=series_uid,
        expected=len(uids),
        fetched=len(missing),
        reused=reused,
        bytes_fetched=counter["bytes"],
        seconds=seconds,
        files=files,
    )


def _write_record(folder: Path, study_uid: str, series_uid: str, uids: Sequence[str]) -> None:
    text = json.dumps(
        {"study_uid": study_uid, "series_uid": series_uid, "instances": sorted(uids), "count": len(uids)},
        indent=1,
    )
    temporary = folder / f"{partial_prefix()}{RECORD}"
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, folder / RECORD)


def cached_files(folder: str | os.PathLike) -> list[Path]:
    """The files of a complete cached series; raises IncompleteSeriesError otherwise."""
    folder = Path(folder)
    record = folder / RECORD
    if not record.is_file():
        present = len(list(folder.glob("*" + SUFFIX))) if folder.is_dir() else 0
        raise IncompleteSeriesError(
            f"The cached series is incomplete ({present} instances present, download not finished).",
            subject=str(folder),
            fix="Run `vsp store open` again: it resumes the download.",
        )
    data = json.loads(record.read_text(encoding="utf-8"))
    files = [folder / (check_uid(uid, "cached instance") + SUFFIX) for uid in data["instances"]]
    absent = [path for path in files if not path.is_file()]
    if absent or len(files) != data["count"]:
        raise IncompleteSeriesError(
            f"{len(absent)} of {data['count']} cached instances are missing.",
            subject=str(folder),
            fix="Run `vsp store open` again: it fetches the missing instances.",
        )
    return files


def is_complete(folder: str | os.PathLike) -> bool:
    try:
        cached_files(folder)
        return True
    except (IncompleteSeriesError, OSError, ValueError, KeyError):
        return False


def load_cached_series(
    scene, folder: str | os.PathLike, *, name: str | None = None, progress=None, **read_options
):
    """Load a complete cached series into ``scene`` (VSPCoreLib.dicom.load_series); a partial
    series is refused. Returns (volume node, DicomVolume)."""
    from VSPCoreLib.dicom import load_series

    files = cached_files(folder)
    return load_series(scene, files, name=name, progress=progress, **read_options)


def choose_series(client: StoreClient, study_uid: str, series_uid: str | None = None) -> dict[str, Any]:
    """The series to open: the one named, or the study's only image series (CT/MR/...)."""
    from .worklist import SOURCE_MODALITIES

    study_uid = check_uid(study_uid, "Study UID")
    series = series_list(client, study_uid)
    if series_uid:
        series_uid = check_uid(series_uid, "Series UID")
        for item in series:
            if item["series_uid"] == series_uid:
                return item
        from .client import StoreNotFoundError

        raise StoreNotFoundError(
            f"Study {study_uid} has no series {series_uid}.",
            subject=client.server,
            fix="Check the series UID.",
        )
    images = [item for item in series if item["modality"] in SOURCE_MODALITIES]
    if len(images) == 1:
        return images[0]
    listing = "; ".join(
        f"{s['series_uid']} ({s['modality']}, {s['instances']} instances, {s['description']!r})"
        for s in images
    )
    raise ConnectorError(
        f"Study {study_uid} has {len(images)} image series" + (f": {listing}." if images else "."),
        subject="Series to open",
        fix="Choose one with --series UID." if images else "Choose another study.",
    )


def open_case(
    client: StoreClient,
    scene,
    study_uid: str,
    series_uid: str | None = None,
    *,
    cache: str | os.PathLike | None = None,
    progress: ProgressCallback | None = None,
    **read_options,
):
    """Download (or resume) the series and load it into ``scene``: (node, volume, result)."""
    from VSPCoreLib.progress import scaled

    chosen = choose_series(client, study_uid, series_uid)
    result = download_series(
        client,
        study_uid,
        chosen["series_uid"],
        cache_dir(client.settings, cache),
        progress=scaled(progress, 0, 0.7),
    )
    node, volume = load_cached_series(
        scene,
        result.folder,
        name=chosen["description"] or None,
        progress=scaled(progress, 0.7, 1.0),
        **read_options,
    )
    return node, volume, result
