"""The durable outbox: every upload to the store goes through a persistent queue.

The queue is a SQLite database (WAL journal, ``synchronous=FULL``: a committed row survives a
crash or a power cut) in the user's private data folder (0700). A file is copied into the
outbox folder (and fsync'd) before its row is committed, so the user's later edits do not
change what is sent, and nothing is lost when the workstation stops before the upload.

Sending an item:

- a DICOM instance: the store is first asked whether it already holds the SOP Instance UID
  (after a crash between the upload and the commit of "sent", the re-check finds it and nothing
  is sent twice); only then is it stored (STOW-RS);
- a case file (plan, manifest): an idempotent PUT of the whole file, sent only once every
  instance queued before it in the same save has arrived (the study must exist first); the
  store decides what a conflict means (see ``cases.py``).

A store that cannot be reached (connection refused, timeout, 5xx, 429) leaves the item pending
with its attempt counted, the error recorded (the kind of failure and the HTTP status only,
never a patient identifier) and the next try scheduled with exponential backoff; the pass stops
there rather than hammering a store that is down. A store that refuses the item itself (4xx) marks
it failed: it waits for the user (``vsp store outbox retry`` or ``drop``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import random
import shutil
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from .errors import ConnectorError

#: Item states. pending: waiting to be sent; sent: in the store; failed: refused by the store,
#: waiting for the user; dropped: removed by the user (its file deleted, the row kept as a record).
PENDING, SENT, FAILED, DROPPED = "pending", "sent", "failed", "dropped"
STATES = (PENDING, SENT, FAILED, DROPPED)
#: Item kinds.
INSTANCE, CASE_FILE = "instance", "case-file"

#: Backoff: the first retry after BACKOFF_BASE_S, doubling, at most BACKOFF_MAX_S, ±20 % jitter.
BACKOFF_BASE_S = 5.0
BACKOFF_MAX_S = 900.0
#: Instances of one study sent in one STOW-RS request: at most this many, this many bytes.
BATCH_COUNT = 64
BATCH_BYTES = 32 * 2**20

#: Threads copying files into the outbox.
COPY_THREADS = 4

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    batch TEXT NOT NULL,
    store TEXT NOT NULL,
    kind TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL DEFAULT '',
    sop_uid TEXT NOT NULL DEFAULT '',
    name TEXT NOT NULL DEFAULT '',
    file TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    options TEXT NOT NULL DEFAULT '{}',
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try REAL NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    result TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    done REAL
);
CREATE INDEX IF NOT EXISTS items_state ON items (state, store, next_try);
"""


class OutboxError(ConnectorError):
    """The outbox cannot be opened or used (its folder, its database)."""


class Busy(OutboxError):
    """Another process is sending from the same outbox."""


class StoreTarget(Protocol):
    """What the outbox needs from a store (``cases.CaseStore`` is one)."""

    #: Identifies the store in the queue (its URL without credentials).
    key: str

    def instance_exists(self, study_uid: str, sop_uid: str) -> bool: ...

    def store_instance(self, path: Path) -> None: ...

    def put_case_file(self, study_uid: str, name: str, data: bytes, options: dict) -> str:
        """Store a case file; returns what happened ("stored", or a conflict note)."""
        ...


@dataclasses.dataclass(frozen=True)
class NewItem:
    """One thing to upload: a DICOM instance file, or a case file (plan, manifest)."""

    kind: str
    path: Path
    study_uid: str
    sop_uid: str = ""
    series_uid: str = ""
    name: str = ""
    options: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class OutboxItem:
    """A row of the queue."""

    id: int
    batch: str
    store: str
    kind: str
    study_uid: str
    series_uid: str
    sop_uid: str
    name: str
    file: str
    size: int
    sha256: str
    options: dict
    state: str
    attempts: int
    next_try: float
    last_error: str
    result: str
    created: float
    done: float | None

    def label(self) -> str:
        """What the item is, for tables and messages (UIDs and file names, no patient data)."""
        if self.kind == INSTANCE:
            return f"instance {self.sop_uid}"
        return f"{self.name} of study {self.study_uid}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class SendReport:
    """What one pass of :meth:`Outbox.send` did."""

    sent: list[int] = dataclasses.field(default_factory=list)
    already_there: list[int] = dataclasses.field(default_factory=list)
    failed: list[int] = dataclasses.field(default_factory=list)
    notes: dict[int, str] = dataclasses.field(default_factory=dict)
    unreachable: str = ""  # the error that stopped the pass, empty when the store answered
    pending: int = 0  # items of this store still pending after the pass

    @property
    def complete(self) -> bool:
        return not self.unreachable and not self.failed and self.pending == 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"complete": self.complete}


def default_outbox_path() -> Path:
    """The outbox database in the user's data folder (``VSP_OUTBOX`` overrides it)."""
    override = os.environ.get("VSP_OUTBOX")
    if override:
        return Path(override)
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "SlicerVSP" / "outbox" / "outbox.sqlite"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _copy_durably(item: NewItem, target: Path) -> tuple[NewItem, Path, str, int]:
    """Copy an item's file to ``target`` (a partial name, fsync'd, then renamed); its hash."""
    partial = target.with_name(target.name + ".partial")
    shutil.copyfile(item.path, partial)
    with open(partial, "rb+") as stream:
        os.fsync(stream.fileno())
    os.replace(partial, target)
    return item, target, sha256_file(target), target.stat().st_size


def _fsync_folder(folder: Path) -> None:
    if os.name != "posix":
        return
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _private_folder(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    if os.name == "posix":
        os.chmod(folder, 0o700)


def backoff_delay(attempts: int, *, base: float = BACKOFF_BASE_S, maximum: float = BACKOFF_MAX_S) -> float:
    """Seconds to wait before try number ``attempts + 1`` (doubling from ``base``, ±20 % jitter)."""
    delay = min(base * 2 ** max(attempts - 1, 0), maximum)
    return delay * random.uniform(0.8, 1.2)


def classify(error: BaseException) -> tuple[str, str]:
    """(``transient`` | ``auth`` | ``rejected``, a short reason without patient data)."""
    import requests

    status = getattr(getattr(error, "response", None), "status_code", None)
    if status is None:
        status = getattr(error, "status_code", None)
    kind = getattr(error, "outbox_kind", None)  # an error that says itself what it is
    if kind:
        return kind, getattr(error, "outbox_reason", type(error).__name__)
    if isinstance(error, requests.Timeout):
        return "transient", "the store did not answer in time"
    if isinstance(error, requests.ConnectionError):
        return "transient", "the store cannot be reached"
    if status is not None:
        if status in (401, 403):
            return "auth", f"HTTP {status}: the store refused the credentials"
        if status in (408, 425, 429) or status >= 500:
            return "transient", f"HTTP {status} from the store"
        return "rejected", f"HTTP {status}: the store refused the item"
    exit_code = getattr(error, "exit_code", None)  # the connector's own errors
    if exit_code == 4:
        return "transient", "the store cannot be reached"
    if exit_code == 5:
        return "auth", "the store refused the credentials"
    if exit_code == 6:
        return "transient", "the store failed (server error)"
    return "rejected", type(error).__name__


class _ProcessLock:
    """An exclusive lock on a file, held while this process sends (POSIX flock / Windows locking)."""

    def __init__(self, path: Path):
        self.path = path
        self.descriptor: int | None = None

    def acquire(self) -> bool:
        self.descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.name == "posix":
                import fcntl

                fcntl.flock(self.descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            else:  # pragma: no cover (Windows)
                import msvcrt

                msvcrt.locking(self.descriptor, msvcrt.LK_NBLCK, 1)
        except OSError:
            os.close(self.descriptor)
            self.descriptor = None
            return False
        return True

    def release(self) -> None:
        if self.descriptor is not None:
            os.close(self.descriptor)  # closing releases the lock
            self.descriptor = None


class Outbox:
    """The persistent upload queue at ``path`` (a SQLite file; its files beside it in ``files/``)."""

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        *,
        backoff_base_s: float = BACKOFF_BASE_S,
        backoff_max_s: float = BACKOFF_MAX_S,
        batch_count: int = BATCH_COUNT,
        batch_bytes: int = BATCH_BYTES,
    ):
        self.path = Path(path) if path is not None else default_outbox_path()
        self.folder = self.path.parent
        self.files = self.folder / "files"
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.batch_count = batch_count
        self.batch_bytes = batch_bytes
        self._deleter: ThreadPoolExecutor | None = None
        try:
            _private_folder(self.folder)
            _private_folder(self.files)
            self._db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            if os.name == "posix":
                os.chmod(self.path, 0o600)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as error:
            raise OutboxError(
                f"cannot open the outbox ({error}).",
                subject=str(self.path),
                fix="check that the folder is writable, or give another one with --outbox PATH.",
            ) from None
        self._clean_orphans()

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---------------------------------------------------------------------------------------
    # Queueing
    # ---------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def add(self, store_key: str, items: Sequence[NewItem], *, batch: str | None = None) -> list[int]:
        """Queue ``items`` for the store ``store_key`` (all or none); returns their ids.

        Each file is copied into the outbox (fsync'd) before the rows are committed in one
        transaction; items are sent in the order given.
        """
        batch = batch or f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{random.randrange(1 << 32):08x}"
        copies: list[tuple[NewItem, Path, str, int]] = []
        targets: list[Path] = []
        try:
            for number, item in enumerate(items):
                if item.kind not in (INSTANCE, CASE_FILE):
                    raise OutboxError(f"unknown item kind {item.kind!r}.", subject=str(item.path))
                if item.kind == INSTANCE and not item.sop_uid:
                    raise OutboxError("a DICOM instance needs its SOP Instance UID.", subject=str(item.path))
                if not Path(item.path).is_file():
                    raise OutboxError(
                        "no such file to upload.", subject=str(item.path), fix="check the file exists."
                    )
                targets.append(self.files / f"{batch}-{number:05d}{''.join(Path(item.path).suffixes[-2:])}")
            # copied, fsync'd and hashed by a few threads: concurrent fsyncs share the file
            # system's journal commits, and hashing releases the GIL (3.5x faster for 300 files)
            with ThreadPoolExecutor(max_workers=COPY_THREADS) as pool:
                copies = list(pool.map(_copy_durably, items, targets))
            _fsync_folder(self.files)
            now = time.time()
            ids = []
            with self._transaction() as db:
                for item, target, digest, size in copies:
                    cursor = db.execute(
                        "INSERT INTO items (batch, store, kind, study_uid, series_uid, sop_uid, name, file,"
                        " size, sha256, options, state, created) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                        (
                            batch,
                            store_key,
                            item.kind,
                            item.study_uid,
                            item.series_uid,
                            item.sop_uid,
                            item.name,
                            target.name,
                            size,
                            digest,
                            json.dumps(item.options, sort_keys=True),
                            PENDING,
                            now,
                        ),
                    )
                    ids.append(int(cursor.lastrowid))
        except BaseException as error:
            for target in targets:
                target.unlink(missing_ok=True)
                target.with_name(target.name + ".partial").unlink(missing_ok=True)
            if isinstance(error, OSError):
                raise OutboxError(
                    f"cannot queue the upload ({error.strerror or error}).",
                    subject=str(self.files),
                    fix="check the free space and permissions of the outbox folder.",
                ) from None
            raise
        return ids

    # ---------------------------------------------------------------------------------------
    # Looking and managing
    # ---------------------------------------------------------------------------------------

    def items(self, *, states: Sequence[str] | None = None, store_key: str | None = None) -> list[OutboxItem]:
        query, args = "SELECT * FROM items WHERE 1=1", []
        if states:
            query += f" AND state IN ({','.join('?' * len(states))})"
            args += list(states)
        if store_key:
            query += " AND store = ?"
            args.append(store_key)
        rows = self._db.execute(query + " ORDER BY id", args).fetchall()
        return [self._item(row) for row in rows]

    def item(self, item_id: int) -> OutboxItem:
        row = self._db.execute("SELECT * FROM items WHERE id = ?", (item_id,)).fetchone()
        if row is None:
            raise OutboxError(
                f"has no item {item_id}.", subject=str(self.path), fix="see `vsp store outbox list`."
            )
        return self._item(row)

    @staticmethod
    def _item(row: sqlite3.Row) -> OutboxItem:
        values = dict(row)
        values["options"] = json.loads(values["options"] or "{}")
        return OutboxItem(**values)

    def file_of(self, item: OutboxItem) -> Path:
        return self.files / item.file

    def retry(self, ids: Sequence[int] | None = None) -> int:
        """Make pending (and failed) items due now; returns how many."""
        with self._transaction() as db:
            if ids:
                for item_id in ids:
                    self.item(item_id)
                marks = ",".join("?" * len(ids))
                cursor = db.execute(
                    f"UPDATE items SET state=?, next_try=0 WHERE id IN ({marks}) AND state IN (?, ?)",
                    (PENDING, *ids, PENDING, FAILED),
                )
            else:
                cursor = db.execute(
                    "UPDATE items SET state=?, next_try=0 WHERE state IN (?, ?)", (PENDING, PENDING, FAILED)
                )
            return cursor.rowcount

    def drop(self, ids: Sequence[int]) -> int:
        """Remove pending or failed items from the queue (their copies are deleted); returns how many."""
        if not ids:
            raise OutboxError("no items named to drop.", fix="give item ids (see `vsp store outbox list`).")
        dropped = 0
        for item_id in ids:
            item = self.item(item_id)
            if item.state not in (PENDING, FAILED):
                continue
            with self._transaction() as db:
                db.execute("UPDATE items SET state=?, done=? WHERE id=?", (DROPPED, time.time(), item_id))
            self.file_of(item).unlink(missing_ok=True)
            dropped += 1
        return dropped

    def _clean_orphans(self) -> None:
        """Delete copies no row refers to (a crash between the copy and the commit) and partials."""
        known = {
            row[0]
            for row in self._db.execute("SELECT file FROM items WHERE state IN (?, ?)", (PENDING, FAILED))
        }
        for path in self.files.iterdir():
            if path.name not in known:
                path.unlink(missing_ok=True)

    # ---------------------------------------------------------------------------------------
    # Sending
    # ---------------------------------------------------------------------------------------

    def _set(self, item_id: int, **values) -> None:
        names = ", ".join(f"{name}=?" for name in values)
        with self._transaction() as db:
            db.execute(f"UPDATE items SET {names} WHERE id=?", (*values.values(), item_id))

    def _finish_all(self, finished: Sequence[tuple[OutboxItem, str]]) -> None:
        """Mark items sent in one transaction, then delete their queued copies."""
        if not finished:
            return
        now = time.time()
        with self._transaction() as db:
            db.executemany(
                "UPDATE items SET state=?, done=?, result=?, last_error='' WHERE id=?",
                [(SENT, now, result, item.id) for item, result in finished],
            )
        copies = [self.file_of(item) for item, _ in finished]
        if self._deleter is not None:
            self._deleter.submit(_delete, copies)
        else:
            _delete(copies)

    def send(
        self,
        target: StoreTarget,
        *,
        ids: Sequence[int] | None = None,
        now: float | None = None,
        progress: Callable[[float, str], None] | None = None,
        before_commit: Callable[[OutboxItem], None] | None = None,
    ) -> SendReport:
        """Send the due pending items for ``target`` (or only ``ids``), in queue order.

        ``before_commit`` (tests) is called after an item was sent and before "sent" is committed.
        Raises :class:`Busy` when another process is sending from this outbox.
        """
        report = SendReport()
        lock = _ProcessLock(self.folder / "send.lock")
        if not lock.acquire():
            raise Busy(
                "another process is sending from this outbox.",
                subject=str(self.path),
                fix="wait for it to finish, then run `vsp store outbox retry`.",
            )
        # the copies of sent items are deleted by a second thread while the next request is
        # on the wire (a crash before leaves orphans, removed when the outbox is next opened)
        self._deleter = ThreadPoolExecutor(max_workers=1)
        try:
            self._send(target, ids, time.time() if now is None else now, progress, before_commit, report)
        finally:
            self._deleter.shutdown(wait=True)
            self._deleter = None
            lock.release()
        report.pending = len(self.items(states=[PENDING], store_key=target.key))
        return report

    def _send(self, target, ids, now, progress, before_commit, report) -> None:
        due = [
            item
            for item in self.items(states=[PENDING], store_key=target.key)
            if item.next_try <= now and (not ids or item.id in ids)
        ]
        blocked_batches: set[str] = set()
        known: dict[str, set[str]] = {}  # study -> SOP UIDs the store holds (listed once a pass)
        done = 0
        batches = hasattr(target, "store_instances")  # else one instance per request and commit
        for group in self._groups(due, self.batch_count if batches else 1):
            if progress:
                progress(done / max(len(due), 1), f"sending {group[0].label()}")
            done += len(group)
            first = group[0]
            if first.kind == CASE_FILE and (first.batch in blocked_batches or self._batch_waiting(first)):
                continue  # its instances first
            try:
                if first.kind == CASE_FILE:
                    results = {first.id: self._send_one(target, first)}
                else:
                    results = self._send_instances(target, group, known)
            except Exception as error:  # noqa: BLE001 (every failure is classified and recorded)
                kind, reason = classify(error)
                if kind == "rejected" and len(group) > 1:
                    results = {}
                    for item in group:  # find the one the store refuses
                        try:
                            results[item.id] = self._send_one(target, item)
                        except Exception as single:  # noqa: BLE001
                            kind, reason = classify(single)
                            if kind != "rejected":
                                self._unreachable(target, item, now, reason, report)
                                return
                            results[item.id] = _Failure(reason)
                elif kind == "rejected":
                    results = {first.id: _Failure(reason)}
                else:
                    self._unreachable(target, first, now, reason, report)
                    return  # the store is down (or refuses us): stop the pass, keep everything queued
            finished = []
            for item in group:
                result = results.get(item.id)
                if result is None:
                    continue
                if isinstance(result, _Failure):
                    self._set(item.id, state=FAILED, attempts=item.attempts + 1, last_error=result.reason)
                    report.failed.append(item.id)
                    blocked_batches.add(item.batch)
                    continue
                if before_commit:
                    before_commit(item)
                finished.append((item, result))
            self._finish_all(finished)  # one commit (one fsync) for the whole request
            for item, result in finished:
                (report.already_there if result == "already in the store" else report.sent).append(item.id)
                if result not in ("stored", "already in the store"):
                    report.notes[item.id] = result
        if progress:
            progress(1.0, "outbox pass done")

    def _unreachable(self, target, item: OutboxItem, now: float, reason: str, report: SendReport) -> None:
        delay = backoff_delay(item.attempts + 1, base=self.backoff_base_s, maximum=self.backoff_max_s)
        self._set(item.id, attempts=item.attempts + 1, next_try=now + delay, last_error=reason)
        with self._transaction() as db:  # the store is down for all its items, not only this one
            db.execute(
                "UPDATE items SET next_try=? WHERE store=? AND state=? AND next_try<?",
                (now + delay, target.key, PENDING, now + delay),
            )
        report.unreachable = reason

    def _groups(self, due: list[OutboxItem], batch_count: int) -> Iterator[list[OutboxItem]]:
        """Case files one by one; consecutive instances of one study together, up to
        ``batch_count`` instances or ``batch_bytes`` (one STOW-RS request when the store can)."""
        group: list[OutboxItem] = []
        size = 0
        for item in due:
            fits = (
                group
                and item.kind == INSTANCE
                and group[0].kind == INSTANCE
                and item.study_uid == group[0].study_uid
                and len(group) < batch_count
                and size + item.size <= self.batch_bytes
            )
            if group and not fits:
                yield group
                group, size = [], 0
            group.append(item)
            size += item.size
        if group:
            yield group

    def _send_instances(self, target, group: list[OutboxItem], known: dict[str, set[str]]) -> dict:
        """Send a group of instances of one study: those the store already holds are not sent."""
        paths = [self.file_of(item) for item in group]
        if not all(path.is_file() for path in paths):
            raise _Damaged()
        with ThreadPoolExecutor(max_workers=COPY_THREADS) as pool:  # hashing releases the GIL
            digests = list(pool.map(sha256_file, paths))
        if digests != [item.sha256 for item in group]:
            raise _Damaged()
        study = group[0].study_uid
        lister = getattr(target, "stored_instances", None)
        results: dict[int, Any] = {}
        if lister is not None:
            if study not in known:
                known[study] = set(lister(study))
            missing = [item for item in group if item.sop_uid not in known[study]]
        else:
            missing = [item for item in group if not target.instance_exists(study, item.sop_uid)]
        for item in group:
            if item not in missing:
                results[item.id] = "already in the store"
        many = getattr(target, "store_instances", None)
        if len(missing) > 1 and many is not None:
            refused = many(
                [self.file_of(item) for item in missing], sop_uids=[item.sop_uid for item in missing]
            )
            for item in missing:
                if item.sop_uid in refused:
                    results[item.id] = _Failure("the store refused the instance (FailedSOPSequence)")
                else:
                    results[item.id] = "stored"
                    known.setdefault(study, set()).add(item.sop_uid)
        else:
            for item in missing:
                target.store_instance(self.file_of(item))
                results[item.id] = "stored"
                known.setdefault(study, set()).add(item.sop_uid)
        return results

    def _batch_waiting(self, item: OutboxItem) -> bool:
        row = self._db.execute(
            "SELECT COUNT(*) FROM items WHERE batch=? AND kind=? AND state IN (?, ?) AND id < ?",
            (item.batch, INSTANCE, PENDING, FAILED, item.id),
        ).fetchone()
        return row[0] > 0

    def _send_one(self, target: StoreTarget, item: OutboxItem) -> str:
        path = self.file_of(item)
        if not path.is_file() or sha256_file(path) != item.sha256:
            raise _Damaged()
        if item.kind == INSTANCE:
            if target.instance_exists(item.study_uid, item.sop_uid):
                return "already in the store"
            target.store_instance(path)
            return "stored"
        return target.put_case_file(item.study_uid, item.name, path.read_bytes(), item.options)


def _delete(paths: Sequence[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


@dataclasses.dataclass(frozen=True)
class _Failure:
    reason: str


class _Damaged(OutboxError):
    outbox_kind = "rejected"
    outbox_reason = "the queued copy is missing or damaged; save the case again"

    def __init__(self):
        super().__init__(self.outbox_reason)
