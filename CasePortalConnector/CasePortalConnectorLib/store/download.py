"""Open a case: download a series into the local cache, check it, and load it into a scene.

The cache holds patient data. It is the user's private folder (mode 0700; default
``$XDG_CACHE_HOME/slicervsp/store`` i.e. ``~/.cache/slicervsp/store``, or ``cache_dir`` in the
store settings, ``$VSP_STORE_CACHE``, ``vsp store open --cache DIR``), laid out as
``<cache>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``: every name is a UID we
checked (digits and dots), never a name chosen by the server.

When at least half of the series is missing (a first download), the whole series comes in one
WADO-RS request whose multipart answer is split as it streams: each part is written to a
temporary file (created ahead by a thread), checked (its Series and Study UIDs are the requested
ones, its SOP Instance UID a valid UID; the UIDs read by :func:`scan_uids` from its first bytes,
pydicom where the scan cannot decide) and renamed to ``<SOP UID>.dcm`` — the UID parsed from the
instance itself. What the stream did not bring whole (cut off, or a store that
cannot send a series) and smaller resumes are fetched one instance per request, several in
parallel, checked the same way (the SOP UID is the one asked). Bytes are written as the store
sent them (no re-encoding), and every file under its final name is whole. When every instance the store lists is
present — and their number equals the store's NumberOfSeriesRelatedInstances — a
``series.json`` record (with every instance's size) is written last, after one fsync of the
folder; a series folder without it is partial, and one whose files are not the recorded sizes
(a power loss: the data itself is not fsync'd) is incomplete. An interrupted
download resumes: the next run fetches only the missing instances. :func:`load_cached_series`
refuses a partial series.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import queue
import stat
import struct
import threading
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import pydicom
import requests

from VSPCoreLib.errors import ServerResponseError, ServerUnreachableError
from VSPCoreLib.files import clear_stale_partials, partial_prefix
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

#: Read size of the series stream (the socket is read in pieces of this size).
STREAM_CHUNK_BYTES = 1 << 20


class _TemporaryFiles:
    """Empty temporary files for the coming parts of a series stream, created ahead by a thread.

    Creating a file costs this filesystem 0.2-0.7 ms (its journal; more while other work writes),
    0.1-0.2 s for 300 instances: more than half the series request's time when done between two
    reads. A thread creates them while the stream is read (it only waits in ``open``, so it
    does not hold the GIL the reading thread needs). Each is private (0600), created exclusively
    under this process's partial prefix; those not used are removed by :meth:`close` (and, after
    a crash, by the next run's ``clear_stale_partials``)."""

    FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)

    def __init__(self, folder: Path, prefix: str, count: int):
        self.folder, self.prefix, self.count = folder, prefix, count
        self.taken = 0
        self.ready: queue.SimpleQueue = queue.SimpleQueue()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._create, name="vsp-cache-files", daemon=True)
        self.thread.start()

    def _open(self, index: int) -> tuple[Path, int]:
        path = self.folder / f"{self.prefix}part-{index}{SUFFIX}"
        return path, os.open(path, self.FLAGS, 0o600)

    def _create(self) -> None:
        try:
            for index in range(self.count):
                if self.stopping.is_set():
                    break
                self.ready.put(self._open(index))
        except OSError as error:
            self.ready.put(error)
        self.ready.put(None)

    def take(self) -> tuple[Path, int]:
        """The next temporary file (path, open descriptor); made here once the thread is done."""
        self.taken += 1
        if self.taken <= self.count:
            item = self.ready.get()
            if isinstance(item, OSError):
                raise item
            if item is not None:
                return item
            self.count = 0  # the thread stopped early: make them here from now on
        return self._open(self.count + self.taken)

    def close(self) -> None:
        """Stop the thread and remove the files not used."""
        self.stopping.set()
        self.thread.join()
        while True:
            try:
                item = self.ready.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, tuple):
                os.close(item[1])
                item[0].unlink(missing_ok=True)


def _write_all(descriptor: int, data) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(descriptor, view) :]


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


def _cached_ok(path: Path, sop_uid: str, size: int | None = None) -> bool:
    """A cached file that parses and carries the expected SOP Instance UID (and, when the
    series' record gave it, its recorded size: a file cut by a power loss is fetched again)."""
    try:
        if size is not None and path.stat().st_size != size:
            return False
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
        return str(ds.SOPInstanceUID) == sop_uid
    except Exception:  # noqa: BLE001 (any damage: fetch it again)
        return False


def _parse_header(head: bytes, path: Path):
    """The header of a received instance with pydicom: from its first bytes when they reach the
    Pixel Data tag (no second read), else from the file. The fallback of :func:`scan_uids`."""
    try:
        if b"\xe0\x7f\x10\x00" in head:
            return pydicom.dcmread(io.BytesIO(head), stop_before_pixels=True)
        return pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:  # noqa: BLE001 (the caller reports an unreadable instance)
        return None


def _parse_bytes(data):
    try:
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    except Exception:  # noqa: BLE001 (the caller reports an unreadable instance)
        return None


# --- a minimal header scan: the three UIDs a received instance is checked and named by -------
_SOP, _SERIES, _STUDY, _PIXEL_DATA = 0x00080018, 0x0020000E, 0x0020000D, 0x7FE00010
_WANTED = {_SOP: "SOPInstanceUID", _SERIES: "SeriesInstanceUID", _STUDY: "StudyInstanceUID"}
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
#: Explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2).
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_IMPLICIT_LE = "1.2.840.10008.1.2"
#: Encodings the scan leaves to pydicom: explicit big endian, deflated (the dataset is zipped).
_NOT_SCANNED = frozenset({"1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.95"})


class _Unscanned(ValueError):
    """The bytes end before the header does, or use an encoding the scan does not read."""


def _element(data, pos: int, implicit: bool) -> tuple[int, bytes | None, int, int]:
    """(tag, VR or None, value start, value length) of the element at ``pos``."""
    if pos + 8 > len(data):
        raise _Unscanned
    group, number = struct.unpack_from("<HH", data, pos)
    tag = group << 16 | number
    if group == 0xFFFE or implicit:  # item tags carry no VR in either encoding
        return tag, None, pos + 8, struct.unpack_from("<I", data, pos + 4)[0]
    vr = bytes(data[pos + 4 : pos + 6])
    if vr in _LONG_VRS:
        if pos + 12 > len(data):
            raise _Unscanned
        return tag, vr, pos + 12, struct.unpack_from("<I", data, pos + 8)[0]
    if not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
        raise ValueError("not a VR")
    return tag, vr, pos + 8, struct.unpack_from("<H", data, pos + 6)[0]


def _walk(data, pos: int, implicit: bool, found: dict | None) -> int:
    """Walk a dataset from ``pos``: the top level (``found`` a dict) up to the Pixel Data tag,
    collecting the wanted UIDs; an item (``found`` None) up to its delimiter. Returns the
    position where it stopped."""
    previous = -1
    while True:
        tag, vr, start, length = _element(data, pos, implicit)
        if found is None and tag == _ITEM_END:
            return start
        if found is not None and tag == _PIXEL_DATA:
            return pos
        if tag >> 16 == 0xFFFE or tag <= previous:
            raise ValueError("elements out of order")
        previous = tag
        if length == _UNDEFINED:
            if vr not in (b"SQ", None):  # UN of undefined length nests implicit VR: not scanned
                raise _Unscanned
            pos = _skip_sequence(data, start, implicit)
            continue
        pos = start + length
        if found is not None and tag in _WANTED:
            if pos > len(data):
                raise _Unscanned
            found[_WANTED[tag]] = bytes(data[start:pos]).rstrip(b"\0 ").decode("latin-1")


def _skip_sequence(data, pos: int, implicit: bool) -> int:
    while True:
        tag, _, start, length = _element(data, pos, implicit)
        if tag == _SEQUENCE_END:
            return start
        if tag != _ITEM:
            raise ValueError("a sequence holds something other than items")
        pos = start + length if length != _UNDEFINED else _walk(data, start, implicit, None)


def scan_uids(data) -> dict[str, str] | None:
    """The SOP Instance, Series and Study Instance UIDs of a DICOM Part 10 instance from its
    first bytes, without pydicom (a few microseconds instead of a full header parse): the file
    meta is read for the transfer syntax, then every element of the dataset up to the Pixel Data
    is walked (sequences and items included, defined or undefined length, explicit or implicit
    VR little endian), so that a damaged header is noticed as pydicom would. Returns the UIDs
    found (a missing one is absent; an empty one is ""), or None when the bytes end before the
    header does or use an encoding left to pydicom (big endian, deflated, no preamble, an UN of
    undefined length) or anything unexpected (elements out of order, a byte pair that is not a
    VR): the caller then parses with pydicom, so the scan never accepts what pydicom refuses
    nor refuses what it reads."""
    data = memoryview(data)
    if len(data) < 132 or data[128:132] != b"DICM":
        return None
    pos, syntax = 132, None
    try:
        while pos + 8 <= len(data) and data[pos : pos + 2] == b"\x02\x00":  # file meta: group 2
            tag, _, start, length = _element(data, pos, False)
            if length == _UNDEFINED:
                return None
            pos = start + length
            if tag == 0x00020010:
                syntax = bytes(data[start:pos]).rstrip(b"\0 ").decode("latin-1")
        if syntax is None or syntax in _NOT_SCANNED or pos + 8 > len(data):
            return None
        found: dict[str, str] = {}
        _walk(data, pos, syntax == _IMPLICIT_LE, found)
    except (ValueError, struct.error):  # _Unscanned included
        return None  # pydicom decides (it reads what the scan does not, or reports the damage)
    return found


def _header_uids(head, path: Path | None) -> dict[str, str] | None:
    """The UIDs of a received instance: the scan of its first bytes, else pydicom's parse; None
    when it is not readable DICOM."""
    found = scan_uids(head)
    if found is not None:
        return found
    ds = _parse_header(bytes(head), path) if path is not None else _parse_bytes(head)
    if ds is None:
        return None
    return {name: str(ds[name].value or "") for name in _WANTED.values() if name in ds}


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
    clear_stale_partials(folder)  # temporary files of a run that crashed
    expected = _expected_count(client, study_uid, series_uid)
    record = folder / RECORD
    sizes = _recorded_sizes(record)
    if record.exists():
        record.unlink()  # re-checked below; a series changed in the store must not look whole
    cached = {name for name in os.listdir(folder) if name.endswith(SUFFIX) and not name.startswith(".")}
    present = len(cached)
    counter = {"done": 0, "bytes": 0, "series_requests": 0, "instance_requests": 0}
    lock = threading.Lock()
    received: set[str] = set()  # SOP UIDs written by this run
    confirmed: set[str] = set()  # SOP UIDs the stream sent that were cached whole already
    planned = {"count": max(0, (expected or 0) - present)}
    prefix = partial_prefix()  # asks for the host name: once

    def check(sop_uid: str | None, uids: dict[str, str] | None) -> str:
        """The SOP UID of a received instance after the checks (``sop_uid``: the one asked;
        ``uids``: what :func:`_header_uids` read from it)."""
        got = None
        if uids is not None and all(name in uids for name in _WANTED.values()):
            got = (uids["SOPInstanceUID"], uids["SeriesInstanceUID"], uids["StudyInstanceUID"])
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
        check(sop_uid, _header_uids(data, None))
        try:
            temporary.write_bytes(data)
            os.replace(temporary, folder / (sop_uid + SUFFIX))
        finally:
            temporary.unlink(missing_ok=True)
        arrived(sop_uid, len(data))

    def finish(temporary: Path, head, size: int, declared: str | None) -> None:
        """Check a part written to ``temporary`` and give it its name (or drop it)."""
        try:
            if declared is not None and declared.strip().isdigit() and int(declared) != size:
                raise ConnectorError(
                    f"The store sent an instance of {size} bytes in a part that declares {declared}.",
                    subject=f"Series {series_uid}",
                    fix="Try again; report it to the store's administrator if it persists.",
                )
            sop_uid = check(None, _header_uids(head, temporary))
            target = folder / (sop_uid + SUFFIX)
            if sop_uid in received or sop_uid in confirmed:
                return  # sent twice
            if target.name in cached and _cached_ok(target, sop_uid, sizes.get(sop_uid)):
                confirmed.add(sop_uid)
                return  # cached whole by an earlier run
            os.replace(temporary, target)
            temporary = None
            arrived(sop_uid, size)
        finally:
            if temporary is not None:
                temporary.unlink(missing_ok=True)

    def stream() -> None:
        """The whole series in one request: each part is written to a temporary file as it
        arrives (unbuffered ``os.write`` of the splitter's slices: no copy of the body in
        Python), then checked (its UIDs scanned from its first bytes) and renamed to its SOP UID
        (parsed from the part, never a name from the server). Instances already cached whole
        are not replaced. All in this thread: a second thread parsing headers made the reading
        thread wait for the GIL after every system call (measured: slower, not faster)."""
        counter["series_requests"] += 1
        descriptor, head, size, declared, temporary = None, bytearray(), 0, None, None
        files = _TemporaryFiles(folder, prefix, planned["count"])
        try:
            for event, value in client.stream_series(study_uid, series_uid, chunk_bytes=STREAM_CHUNK_BYTES):
                if event == "data":
                    _write_all(descriptor, value)
                    if len(head) < HEAD_BYTES:
                        head += value[: HEAD_BYTES - len(head)]
                    size += len(value)
                elif event == "part":
                    temporary, descriptor = files.take()
                    head, size, declared = bytearray(), 0, value.get("content-length")
                else:
                    os.close(descriptor)
                    descriptor = None
                    finish(temporary, head, size, declared)
        finally:
            if descriptor is not None:
                os.close(descriptor)
                temporary.unlink(missing_ok=True)
            files.close()

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
        if uid not in received
        and uid not in confirmed
        and not _cached_ok(folder / (uid + SUFFIX), uid, sizes.get(uid))
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


def _recorded_sizes(record: Path) -> dict[str, int]:
    """The instance sizes kept in a series record (empty when there is none or it is older)."""
    try:
        sizes = json.loads(record.read_text(encoding="utf-8")).get("bytes") or {}
        return {str(uid): int(size) for uid, size in sizes.items()}
    except (OSError, ValueError, AttributeError, TypeError):
        return {}


def _write_record(folder: Path, study_uid: str, series_uid: str, uids: Sequence[str]) -> None:
    """Mark the series complete, with every instance's size.

    Durability: the instances are not fsync'd one by one (0.06-0.25 s more for the full
    series here, as much as the download); the folder is fsync'd once before the record is
    written, so the names are on disk. A process that crashes loses nothing written (the page
    cache keeps it); after a power loss an instance's data may be shorter than its name says:
    the sizes in the record make :func:`cached_files` refuse such a series and the next
    download fetch those instances again."""
    ordered = sorted(uids)
    sizes = {uid: (folder / (uid + SUFFIX)).stat().st_size for uid in ordered}
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    text = json.dumps(
        {
            "study_uid": study_uid,
            "series_uid": series_uid,
            "instances": ordered,
            "count": len(ordered),
            "bytes": sizes,
        },
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
    sizes = data.get("bytes") or {}
    absent, cut = [], []
    for uid, path in zip(data["instances"], files, strict=True):
        try:
            size = path.stat().st_size
        except OSError:
            absent.append(path)
            continue
        if uid in sizes and sizes[uid] != size:
            cut.append(path)
    if absent or cut or len(files) != data["count"]:
        raise IncompleteSeriesError(
            f"{len(absent)} of {data['count']} cached instances are missing"
            + (f" and {len(cut)} are not the size recorded (cut by a power loss?)." if cut else "."),
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
