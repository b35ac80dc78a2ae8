"""Open a case: download a series into the local cache, check it, and load it into a scene.

The cache holds patient data. It is the user's private folder (mode 0700; default
``$XDG_CACHE_HOME/slicervsp/store`` i.e. ``~/.cache/slicervsp/store``, or ``cache_dir`` in the
store settings, ``$VSP_STORE_CACHE``, ``vsp store open --cache DIR``), laid out as
``<cache>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``: every name is a UID we
checked (digits and dots), never a name chosen by the server.

When at least half of the series is missing (a first download), the whole series comes in one
WADO-RS request whose multipart answer is split as it streams: each part is written to a
temporary file, parsed, checked (its Series and Study UIDs are the requested ones, its SOP
Instance UID one the store listed and still missing) and renamed to ``<SOP UID>.dcm`` — the UID
parsed from the instance itself. What the stream did not bring whole (cut off, or a store that
cannot send a series) and smaller resumes are fetched one instance per request, several in
parallel, checked the same way (the SOP UID is the one asked). Bytes are written as the store
sent them (no re-encoding), and every file under its final name is whole. When every instance the store lists is
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
import requests

from VSPCoreLib.errors import ServerResponseError, ServerUnreachableError
from VSPCoreLib.files import partial_prefix
from VSPCoreLib.progress import ProgressCallback, report

from ..errors import ConnectorError
from .client import StoreClient
from .worklist import check_uid, get, series_list

log = logging.getLogger(__name__)

RECORD = "series.json"
SUFFIX = ".dcm"

#: Fetch the whole series in one WADO-RS request when at least this fraction of it is missing
#: (one request instead of one per instance: the store's answer streams at disk speed); fewer
#: missing instances are asked for one by one, several at a time.
SERIES_REQUEST_FRACTION = 0.5

#: The first bytes of each received instance are kept to parse its header without reading it back.
HEAD_BYTES = 64 * 1024


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
    series_requests: int = 0  # whole-series WADO-RS requests made
    instance_requests: int = 0  # single-instance WADO-RS requests made

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


def _parse_header(head: bytes, path: Path):
    """The header of a received instance: from its first bytes when they reach the Pixel Data
    tag (no second read), else from the file."""
    try:
        if b"\xe0\x7f\x10\x00" in head:
            return pydicom.dcmread(io.BytesIO(head), stop_before_pixels=True)
        return pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:  # noqa: BLE001 (the caller reports an unreadable instance)
        return None


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
    record = folder / RECORD
    if record.exists():
        record.unlink()  # re-checked below; a series changed in the store must not look whole
    present = sum(1 for path in folder.glob("*" + SUFFIX) if not path.name.startswith("."))
    counter = {"done": 0, "bytes": 0, "series_requests": 0, "instance_requests": 0}
    lock = threading.Lock()
    received: set[str] = set()  # SOP UIDs written by this run
    confirmed: set[str] = set()  # SOP UIDs the stream sent that were cached whole already
    planned = {"count": max(0, (expected or 0) - present)}
    prefix = partial_prefix()  # asks for the host name: once

    def check(sop_uid: str | None, ds) -> str:
        """The SOP UID of a received instance after the checks (``sop_uid``: the one asked)."""
        try:
            got = (str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID), str(ds.StudyInstanceUID))
        except Exception:  # noqa: BLE001 (whatever the parser says: not a usable instance)
            got = None
        subject = f"Instance {sop_uid}" if sop_uid else f"Series {series_uid}"
        if got is None:
            raise ConnectorError(
                "The store sent an instance that cannot be read as DICOM.",
                subject=subject,
                fix="Try again; report it to the store's administrator if it persists.",
            )
        if got[1:] != (series_uid, study_uid) or (sop_uid is not None and got[0] != sop_uid):
            raise ConnectorError(
                "The store sent a different instance than the one requested.",
                subject=subject,
                fix="Report it to the store's administrator.",
            )
        return check_uid(got[0], f"SOP Instance UID sent for series {series_uid}")  # a file name

    def arrived(sop_uid: str, size: int) -> None:
        with lock:
            received.add(sop_uid)
            counter["done"] += 1
            counter["bytes"] += size
            done = counter["done"]
        total = max(planned["count"], done)
        report(progress, 0.95 * done / max(1, total), f"Downloaded {done}/{total} instances")

    def fetch(sop_uid: str) -> None:
        with lock:
            counter["instance_requests"] += 1
        data = client.retrieve_instance_bytes(study_uid, series_uid, sop_uid)
        temporary = folder / f"{prefix}{sop_uid}{SUFFIX}"
        check(sop_uid, _parse_header(data, temporary))
        try:
            temporary.write_bytes(data)
            os.replace(temporary, folder / (sop_uid + SUFFIX))
        finally:
            temporary.unlink(missing_ok=True)
        arrived(sop_uid, len(data))

    def finish(temporary: Path, head: bytes, size: int, declared: str | None) -> None:
        """Check a part written to ``temporary`` and give it its name (or drop it)."""
        try:
            if declared is not None and declared.strip().isdigit() and int(declared) != size:
                raise ConnectorError(
                    f"The store sent an instance of {size} bytes in a part that declares {declared}.",
                    subject=f"Series {series_uid}",
                    fix="Try again; report it to the store's administrator if it persists.",
                )
            sop_uid = check(None, _parse_header(head, temporary))
            target = folder / (sop_uid + SUFFIX)
            if sop_uid in received or sop_uid in confirmed:
                return  # sent twice
            if target.is_file() and _cached_ok(target, sop_uid):
                with lock:
                    confirmed.add(sop_uid)
                return  # cached whole by an earlier run
            os.replace(temporary, target)
            arrived(sop_uid, size)
        finally:
            temporary.unlink(missing_ok=True)

    def stream() -> None:
        """The whole series in one request: each part is written to a temporary file as it
        arrives; another thread checks it and renames it to its SOP UID (parsed from the part,
        never a name from the server). Instances already cached whole are not replaced."""
        counter["series_requests"] += 1
        handle, head, size, declared, temporary = None, bytearray(), 0, None, None
        finishing = []
        with ThreadPoolExecutor(max_workers=1) as finisher:
            try:
                for event, value in client.stream_series(study_uid, series_uid):
                    if event == "data":
                        handle.write(value)
                        if len(head) < HEAD_BYTES:
                            head += value[: HEAD_BYTES - len(head)]
                        size += len(value)
                    elif event == "part":
                        temporary = folder / f"{prefix}part-{len(finishing)}{SUFFIX}"
                        handle = open(temporary, "wb")  # noqa: SIM115 (closed at "end" or below)
                        head, size, declared = bytearray(), 0, value.get("content-length")
                    else:
                        handle.close()
                        handle = None
                        finishing.append(finisher.submit(finish, temporary, bytes(head), size, declared))
                        if finishing[-1].done() and finishing[-1].exception() is not None:
                            break  # a bad instance: stop reading
            finally:
                if handle is not None:
                    handle.close()
                    temporary.unlink(missing_ok=True)
                wait(finishing)
                for future in finishing:
                    if future.exception() is not None:
                        raise future.exception()

    workers = max(1, workers or client.settings.parallel)
    uids = None
    if expected and expected - present >= max(2, expected * SERIES_REQUEST_FRACTION):
        report(progress, 0.0, f"Downloading the series ({expected} instances, {present} cached)")
        try:
            stream()
            if len(received | confirmed) == expected:
                # the stream ended with its closing delimiter and brought as many distinct
                # instances of this series as the store counts: whole, no listing needed
                uids = sorted(received | confirmed)
        except (requests.exceptions.RequestException, ServerUnreachableError, ServerResponseError) as error:
            # cut off, or a store that cannot send a whole series: what arrived whole is
            # kept; the rest is asked for one by one below (and fails there if it is down)
            log.warning(
                "The series request failed or was cut (%s); fetching the rest one instance at a time.",
                type(error).__name__,
            )
    if uids is None:
        uids = _instance_uids(client, study_uid, series_uid)
    if expected is not None and expected != len(uids):
        raise ConnectorError(
            f"The store says the series has {expected} instances but lists {len(uids)}.",
            subject=f"Series {series_uid}",
            fix="The store may still be receiving it; try again in a minute.",
        )
    if not uids:
        raise ConnectorError("The series has no instances.", subject=f"Series {series_uid}")
    stray = received - set(uids)
    if stray:  # sent by the store but not in its listing: not part of what we open
        log.warning("The store sent %d instances it does not list; they are not kept.", len(stray))
        for sop_uid in stray:
            (folder / (sop_uid + SUFFIX)).unlink(missing_ok=True)
            received.discard(sop_uid)
            counter["done"] -= 1
    missing = [
        uid
        for uid in uids
        if uid not in received and uid not in confirmed and not _cached_ok(folder / (uid + SUFFIX), uid)
    ]
    if missing:
        planned["count"] = counter["done"] + len(missing)
        report(
            progress,
            0.95 * counter["done"] / planned["count"],
            f"Downloading {len(missing)} of {len(uids)} instances one by one",
        )
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
    fetched = len(received)
    report(progress, 1.0, f"Series complete: {len(uids)} instances ({fetched} downloaded)")
    return DownloadResult(
        folder=folder,
        study_uid=study_uid,
        series_uid=series_uid,
        expected=len(uids),
        fetched=fetched,
        reused=len(uids) - fetched,
        bytes_fetched=counter["bytes"],
        seconds=seconds,
        files=files,
        series_requests=counter["series_requests"],
        instance_requests=counter["instance_requests"],
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
