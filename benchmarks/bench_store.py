"""Store benchmark against a local Orthanc (Testing/orthanc_server.py): series download and the
worklist.

1. Download: the sample series (``--size full`` = 512 x 512 x 300, or medium/small) is uploaded,
   then fetched into a fresh cache by ``download_series`` (into an empty cache: the whole series
   in one WADO-RS request, its multipart answer split into one file per instance as it streams,
   each checked and renamed to its SOP UID; the store's series count asked first) and, in the
   same run, by ``curl`` making the same request — the series URL, the same Accept header
   (``multipart/related; type="application/dicom"``) and ``Accept-Encoding: identity`` (no
   gzip, as ours) — writing the answer to one file. The ratio of the two throughputs is the
   target (>= 0.8). For reference, ``curl`` also fetches every instance by its own WADO-RS URL,
   ``--parallel`` at a time (how the download worked before). The processor time (user +
   system) of both is reported too: on a shared machine it varies less than the wall time.
   Each run's files are deleted and ``sync``ed before the next timed run (see ``_remove``).
2. Worklist: ``--studies`` tiny studies (one 8 x 8 slice each) are uploaded; then a search over
   all of them in one page, a 25-study page with planning states, and a filtered search are
   timed, each ``--repeats`` times (best and median reported).

    python benchmarks/bench_store.py --size full --parallel 4 --studies 1000
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "Testing"))

SIZES = {"small": (128, 128, 75), "medium": (256, 256, 150), "full": (512, 512, 300)}


def _client(server, parallel: int):
    from CasePortalConnectorLib.store import StoreClient, StoreSettings

    settings = StoreSettings(url=server.url, username=server.user, parallel=parallel, read_timeout_s=120)
    return StoreClient(settings, secret=server.password)


def _cpu(before, after) -> float:
    return round(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, 3)


def _remove(path: Path) -> None:
    """Delete the previous run's files and let the filesystem finish with it (``sync``) before
    the next timed run, ours or curl's: on a filesystem mounted with ``discard`` (this one) the
    freed blocks are trimmed at the next journal commit, which otherwise stalls the next run's
    file creations (ours: 300 files) at random."""
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    os.sync()


def bench_download(server, work: Path, size: str, parallel: int, repeats: int) -> dict:
    import pydicom

    from CasePortalConnectorLib.store import download_series
    from CasePortalConnectorLib.store.worklist import get
    from VSPCoreLib.sampledata.dicom_writer import write_dicom_series
    from VSPCoreLib.sampledata.phantom import generate_phantom

    start = time.perf_counter()
    files = write_dicom_series(generate_phantom(SIZES[size], seed=1), work / "source")
    generated = time.perf_counter() - start
    start = time.perf_counter()
    server.upload_folder(work / "source")
    uploaded = time.perf_counter() - start
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    study, series = str(first.StudyInstanceUID), str(first.SeriesInstanceUID)
    client = _client(server, parallel)
    sops = [get(item, "SOPInstanceUID") for item in client.search_instances(study, series)]
    ours, curls, curls_each = [], [], []
    accept = 'header = "Accept: multipart/related; type=\\"application/dicom\\""'
    credentials = f'user = "{server.user}:{server.password}"'
    ours_cpu, curls_cpu = [], []
    for repeat in range(repeats):
        cache = work / f"cache{repeat}"
        before = resource.getrusage(resource.RUSAGE_SELF)
        result = download_series(client, study, series, cache, workers=parallel)
        ours_cpu.append(_cpu(before, resource.getrusage(resource.RUSAGE_SELF)))
        assert result.fetched == len(files) and (result.series_requests, result.instance_requests) == (1, 0)
        ours.append((result.seconds, result.bytes_fetched))
        _remove(cache)
        # curl: the same request (series URL, Accept, identity encoding), the answer to one file
        target = work / f"curl{repeat}.multipart"
        config = work / "curl.cfg"
        config.write_text(
            "\n".join(
                [
                    credentials,
                    accept,
                    'header = "Accept-Encoding: identity"',
                    f'url = "{server.dicomweb_url}/studies/{study}/series/{series}"',
                    f'output = "{target}"',
                ]
            )
            + "\n"
        )
        config.chmod(0o600)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        begin = time.perf_counter()
        subprocess.run(["curl", "-sS", "--fail", "--config", str(config)], check=True)
        seconds = time.perf_counter() - begin
        curls_cpu.append(_cpu(before, resource.getrusage(resource.RUSAGE_CHILDREN)))
        curls.append((seconds, target.stat().st_size))
        _remove(target)
        # reference: every instance by its own URL, ``parallel`` at a time, bytes to disk
        folder = work / f"curl-each{repeat}"
        folder.mkdir()
        lines = [credentials, accept, 'header = "Accept-Encoding: identity"']
        for sop in sops:
            lines.append(f'url = "{server.dicomweb_url}/studies/{study}/series/{series}/instances/{sop}"')
            lines.append(f'output = "{folder / sop}"')
        config.write_text("\n".join(lines) + "\n")
        begin = time.perf_counter()
        subprocess.run(
            ["curl", "-sS", "--fail", "--parallel", "--parallel-max", str(parallel), "--config", str(config)],
            check=True,
        )
        curls_each.append((time.perf_counter() - begin, sum(p.stat().st_size for p in folder.iterdir())))
        _remove(folder)
        config.unlink()
    best_ours = min(ours)
    best_curl = min(curls)
    best_each = min(curls_each)
    ours_mb_s = best_ours[1] / 1e6 / best_ours[0]
    curl_mb_s = best_curl[1] / 1e6 / best_curl[0]
    median_ours = statistics.median(s for s, _ in ours)
    median_curl = statistics.median(s for s, _ in curls)
    return {
        "size": size,
        "shape": SIZES[size],
        "instances": len(files),
        "generate_s": round(generated, 2),
        "upload_s": round(uploaded, 2),
        "parallel": parallel,
        "ours_s": [round(s, 3) for s, _ in ours],
        "curl_series_request_s": [round(s, 3) for s, _ in curls],
        "curl_each_instance_parallel_s": [round(s, 3) for s, _ in curls_each],
        "curl_each_instance_mb_s": round(best_each[1] / 1e6 / best_each[0], 1),
        "ours_mb": round(best_ours[1] / 1e6, 1),
        "curl_mb": round(best_curl[1] / 1e6, 1),
        "ours_mb_s": round(ours_mb_s, 1),
        "curl_mb_s": round(curl_mb_s, 1),
        # the same answer (ours counts the instances' bytes, curl the whole multipart body with
        # its part headers and delimiters, 0.03 % more): the ratio of the times
        "ratio_throughput": round(best_curl[0] / best_ours[0], 3),
        "ratio_throughput_median": round(median_curl / median_ours, 3),
        "ours_cpu_s": ours_cpu,  # user + system time of this process during the download
        "curl_cpu_s": curls_cpu,
        "target_ratio": 0.8,
    }


def bench_worklist(server, work: Path, studies: int, repeats: int = 5) -> dict:
    import pydicom
    from pydicom.uid import generate_uid

    from CasePortalConnectorLib.store import WorklistQuery, search_worklist
    from VSPCoreLib.sampledata.dicom_writer import write_dicom_series
    from VSPCoreLib.sampledata.phantom import generate_phantom

    template = pydicom.dcmread(write_dicom_series(generate_phantom((8, 8, 2), seed=2), work / "tiny")[0])
    start = time.perf_counter()
    for n in range(studies):
        ds = copy.deepcopy(template)
        ds.PatientID, ds.PatientName = f"BENCH{n:05d}", f"Bench^{n:05d}"
        ds.StudyDescription, ds.AccessionNumber = (
            f"BENCH {'kidney' if n % 10 == 0 else 'liver'} {n}",
            f"B{n:06d}",
        )
        ds.StudyDate = f"2023{1 + n % 12:02d}{1 + n % 28:02d}"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        server.rest("POST", "/instances", buffer.getvalue())
    uploaded = time.perf_counter() - start
    client = _client(server, 4)
    queries = {
        "all_in_one_page": lambda: search_worklist(client, WorklistQuery(), limit=studies, with_state=False),
        "page_25_with_states": lambda: search_worklist(
            client, WorklistQuery(), limit=25, offset=studies // 2
        ),
        "filtered": lambda: search_worklist(
            client,
            WorklistQuery(description="BENCH kidney", date_from="2023-01-01"),
            limit=200,
            with_state=False,
        ),
    }
    timings = {}
    for name, query in queries.items():
        seconds = []
        for _ in range(repeats):
            begin = time.perf_counter()
            page = query()
            seconds.append(round(time.perf_counter() - begin, 3))
        timings[name + "_s"] = seconds
        timings[name + "_best_s"] = min(seconds)
        timings[name + "_median_s"] = statistics.median(seconds)
        if name == "all_in_one_page":
            assert len(page.studies) >= studies
        if name == "filtered":
            timings["filtered_matches"] = len(page.studies)
    return {"studies": studies, "upload_s": round(uploaded, 1), **timings}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=SIZES, default="full")
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--studies", type=int, default=1000)
    parser.add_argument("--skip-download", action="store_true")
    parser.add_argument("--skip-worklist", action="store_true")
    parser.add_argument("--out", type=Path, help="also write the JSON report here")
    args = parser.parse_args()
    from orthanc_server import OrthancServer

    report = {}
    with tempfile.TemporaryDirectory(prefix="bench-store-") as folder:
        work = Path(folder)
        server = OrthancServer(work / "orthanc")
        try:
            server.start()
            if not args.skip_download:
                report["download"] = bench_download(server, work, args.size, args.parallel, args.repeats)
                print(json.dumps(report["download"]), file=sys.stderr)
            if not args.skip_worklist:
                server.clear()
                report["worklist"] = bench_worklist(server, work, args.studies, args.repeats)
        finally:
            server.close()
    text = json.dumps(report, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
