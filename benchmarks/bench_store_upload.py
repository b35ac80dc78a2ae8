"""Benchmark: uploading the sample CT series to a local Orthanc through the durable outbox,
against ``curl`` posting the same instances (STOW-RS) in the same run.

- ``ours``: every instance queued in the outbox (copied into it, fsync'd, hashed, one SQLite
  transaction) and sent by :meth:`Outbox.send`: the study's stored SOP UIDs listed once, each
  queued copy's hash checked, then STOW-RS requests of at most 64 instances / 32 MiB, the
  files' bytes posted as they are (multipart/related with a Content-Length) through the
  configured session, each answer checked. Reported as the send phase (what the network sees)
  and end to end (queue + send).
- ``curl`` (compared): the same batches — the same instances in the same number of STOW-RS
  requests, each with the same Content-Type, Accept and a Content-Length, and no ``Expect: 100-continue``
  (which curl sends by default and then waits up to 1 s for; requests never sends it) — posted
  with ``curl --data-binary`` over one connection (``--next``); the bodies are prepared beforehand,
  not timed.
- ``curl_one_request`` (reference): every instance in one STOW-RS request.

Between runs the study is deleted, so every run really stores every instance. Runs alternate
(``--repeat``, default 3); medians are compared: ``ratio_send_to_curl`` is ours' throughput over
curl's with the same batches (target >= 0.8).

    python benchmarks/bench_store_upload.py                       # 512 x 512 x 300
    python benchmarks/bench_store_upload.py --shape 256 256 150 --out /tmp/upload.json
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from _common import emit, peak_rss_mib

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "Testing"))


def _series(shape, folder: Path) -> list[Path]:
    from VSPCoreLib.sampledata.dicom_writer import write_dicom_series
    from VSPCoreLib.sampledata.phantom import generate_phantom

    write_dicom_series(generate_phantom(tuple(shape), seed=0), folder)
    return sorted(path for path in folder.iterdir() if path.is_file())


def _multipart(files: list[Path], body: Path) -> str:
    boundary = uuid.uuid4().hex
    with open(body, "wb") as out:
        for path in files:
            out.write(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
            out.write(path.read_bytes())
            out.write(b"\r\n")
        out.write(f"--{boundary}--\r\n".encode())
    return f'multipart/related; type="application/dicom"; boundary={boundary}'


def _batches(files: list[Path]) -> list[list[Path]]:
    """The outbox's grouping: consecutive instances, at most its count and bytes per request."""
    from CasePortalConnectorLib.outbox import BATCH_BYTES, BATCH_COUNT

    batches, size = [[]], 0
    for path in files:
        if batches[-1] and (len(batches[-1]) >= BATCH_COUNT or size + path.stat().st_size > BATCH_BYTES):
            batches.append([])
            size = 0
        batches[-1].append(path)
        size += path.stat().st_size
    return batches


def _clear(server) -> None:
    server.clear()


def _curl(server, bodies: list[tuple[Path, str]]) -> float:
    """One curl process posting each body in turn over one connection."""
    command = ["curl", "-sS", "--fail"]
    for n, (body, content_type) in enumerate(bodies):
        if n:
            command.append("--next")
        command += [
            "-o", os.devnull,
            "-u", f"{server.user}:{server.password}",
            "-H", f"Content-Type: {content_type}",
            "-H", "Accept: application/dicom+json",
            "-H", "Expect:",  # no 100-continue wait (curl waits 1 s for it; requests never asks)
            "--data-binary", f"@{body}",
            server.dicomweb_url + "/studies",
        ]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"curl failed: {done.stderr}")
    return elapsed


def _ours(server, files: list[Path], work: Path) -> dict:
    import pydicom
    import requests

    from CasePortalConnectorLib.cases import CaseStore
    from CasePortalConnectorLib.outbox import INSTANCE, NewItem, Outbox

    session = requests.Session()
    session.auth = (server.user, server.password)
    store = CaseStore(server.dicomweb_url, orthanc_url=server.url, session=session)
    shutil.rmtree(work, ignore_errors=True)
    start = time.perf_counter()
    items = []
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        items.append(NewItem(INSTANCE, path, str(ds.StudyInstanceUID), sop_uid=str(ds.SOPInstanceUID)))
    with Outbox(work / "outbox.sqlite") as outbox:
        outbox.add(store.key, items)
        queued = time.perf_counter()
        report = outbox.send(store)
        sent = time.perf_counter()
    if not report.complete or len(report.sent) != len(files):
        raise SystemExit(f"our upload did not complete: {report}")
    return {"queue_s": queued - start, "send_s": sent - queued, "total_s": sent - start}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", type=int, nargs=3, default=(512, 512, 300), metavar=("C", "R", "S"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    from orthanc_server import OrthancServer

    root = Path(tempfile.mkdtemp(prefix="bench-upload-"))
    try:
        files = _series(args.shape, root / "dicom")
        total_bytes = sum(path.stat().st_size for path in files)
        one = [(root / "body.bin", _multipart(files, root / "body.bin"))]
        batched = [
            (root / f"batch{n}.bin", _multipart(batch, root / f"batch{n}.bin"))
            for n, batch in enumerate(_batches(files))
        ]
        server = OrthancServer(root / "orthanc").start()
        try:
            # One warm-up of each (first-time SQLite/index work), not counted.
            _curl(server, batched)
            _clear(server)
            _ours(server, files, root / "box")
            _clear(server)
            runs = {
                "curl_s": [],
                "curl_one_request_s": [],
                "ours_send_s": [],
                "ours_queue_s": [],
                "ours_total_s": [],
            }
            for _ in range(args.repeat):
                for key, bodies in (("curl_s", batched), ("curl_one_request_s", one)):
                    runs[key].append(_curl(server, bodies))
                    stored = len(server.rest("GET", "/instances"))
                    assert stored == len(files), stored
                    _clear(server)
                ours = _ours(server, files, root / "box")
                stored = len(server.rest("GET", "/instances"))
                assert stored == len(files), stored
                _clear(server)
                runs["ours_send_s"].append(ours["send_s"])
                runs["ours_queue_s"].append(ours["queue_s"])
                runs["ours_total_s"].append(ours["total_s"])
        finally:
            server.close()
        mib = total_bytes / 2**20
        medians = {key: statistics.median(values) for key, values in runs.items()}
        report = {
            "benchmark": "store upload (STOW-RS to a local Orthanc)",
            "shape": list(args.shape),
            "instances": len(files),
            "mib": round(mib, 1),
            "requests": len(batched),
            "repeat": args.repeat,
            "runs_s": {key: [round(v, 3) for v in values] for key, values in runs.items()},
            "median_s": {key: round(v, 3) for key, v in medians.items()},
            "mib_per_s": {
                "curl": round(mib / medians["curl_s"], 1),
                "curl_one_request": round(mib / medians["curl_one_request_s"], 1),
                "ours_send": round(mib / medians["ours_send_s"], 1),
                "ours_end_to_end": round(mib / medians["ours_total_s"], 1),
            },
            "ratio_send_to_curl": round(medians["curl_s"] / medians["ours_send_s"], 3),
            "ratio_end_to_end_to_curl": round(medians["curl_s"] / medians["ours_total_s"], 3),
            "target_ratio": 0.8,
            "peak_rss_mib": round(peak_rss_mib(), 1),
            "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        }
        emit(report, args.out)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
