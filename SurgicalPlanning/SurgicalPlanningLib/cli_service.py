"""`vsp service info|infer|jobs|resume`: the GPU segmentation service from the command line.

Settings come from ``--settings FILE`` (or $VSP_SERVICE_SETTINGS), then $VSP_SERVICE_URL,
$VSP_SERVICE_TOKEN_FILE, $VSP_SERVICE_MODEL, then the flags. Without a URL the local engine
runs; ``--backend dicom`` asks an AI node that works through the store (``--study/--series``,
``--store-settings``; service/dicom_inout.py). Jobs are kept in the case manifest
(``store-case.json``) of ``--case-folder DIR`` or of the case folder --out lies in, else in
``service-jobs.json`` beside --out (or --jobs PATH), so a job picked up after a restart is not
submitted twice. Exit codes: 0 done, 2 bad input or unknown model,
4 service unreachable or connection lost, 5 credentials refused, 6 service failed (server
error, timeout, malformed answer), 130/143 interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

OUT_SUFFIXES = (".seg.nrrd", ".mrb", ".mrml")


def register(commands, common) -> None:
    service = commands.add_parser(
        "service",
        parents=[common],
        help="the segmentation service (MONAI Label server, DICOM-in/out AI node or local engine): "
        "info, infer, jobs, resume",
        description="Ask the hospital's GPU segmentation service (a MONAI Label server) or the local "
        "engine for a segmentation; the result is imported as a coded segmentation on the source grid. "
        "Exit codes: 2 bad input or unknown model, 4 unreachable, 5 credentials refused, 6 service failed.",
    )
    sub = service.add_subparsers(dest="service_command", metavar="SUBCOMMAND", required=True)
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument(
        "--settings", type=Path, help="service settings JSON (default: $VSP_SERVICE_SETTINGS)"
    )
    shared.add_argument("--url", help="service URL (default: $VSP_SERVICE_URL; none: the local engine)")
    shared.add_argument(
        "--backend", choices=("monailabel", "local", "dicom"), help="backend (default from the settings)"
    )
    shared.add_argument(
        "--store-settings",
        type=Path,
        metavar="FILE",
        help="backend dicom: the store settings file (default: vsp store's)",
    )
    shared.add_argument(
        "--store", metavar="NAME", help="backend dicom: the store (server name) the node watches"
    )
    shared.add_argument("--timeout-s", type=float, help="longest wait for one answer (s)")
    shared.add_argument("--json", action="store_true", help="machine-readable output on stdout")

    info = sub.add_parser("info", parents=[common, shared], help="the backend, its models and their labels")
    info.set_defaults(handler=_info)

    infer = sub.add_parser(
        "infer", parents=[common, shared], help="segment a volume (or a server datastore image) and import it"
    )
    infer.add_argument("--model", help="model name (default: $VSP_SERVICE_MODEL or the settings')")
    source = infer.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--volume", type=Path, help="the CT: volume file or DICOM folder (sent as a clean NRRD)"
    )
    source.add_argument("--image", help="an image id in the server's datastore (nothing is sent)")
    source.add_argument("--series", help="backend dicom: the source series UID in the store (with --study)")
    infer.add_argument("--study", help="backend dicom: the study UID of --series")
    infer.add_argument("--reference", type=Path, help="with --image: the CT the result must lie on")
    infer.add_argument(
        "--out",
        required=True,
        type=Path,
        help="output segmentation (.seg.nrrd), or a case scene with the CT and the segmentation "
        "(.mrb/.mrml, ready for `vsp plan`)",
    )
    infer.add_argument(
        "--case-folder",
        type=Path,
        metavar="DIR",
        help="record the job in this case folder's manifest (store-case.json; made when missing)",
    )
    infer.add_argument(
        "--jobs",
        type=Path,
        help="job store (default: the manifest of the case folder --out lies in, else "
        "service-jobs.json beside --out)",
    )
    infer.add_argument("--params", default="{}", help="model parameters as a JSON object")
    infer.add_argument(
        "--session", action="store_true", help="send the volume once as a session (large volumes)"
    )
    infer.add_argument(
        "--save-label", action="store_true", help="save the result back to the server's datastore"
    )
    infer.set_defaults(handler=_infer)

    jobs = sub.add_parser("jobs", parents=[common, shared], help="list the jobs of a job store")
    jobs.add_argument(
        "--jobs",
        type=Path,
        default=Path("."),
        help="job store file, case folder (its store-case.json) or folder (default: .)",
    )
    jobs.set_defaults(handler=_jobs)

    resume = sub.add_parser("resume", parents=[common, shared], help="complete a job after a restart")
    resume.add_argument("job", help="job id (or a unique prefix)")
    resume.add_argument(
        "--jobs",
        type=Path,
        default=Path("."),
        help="job store file, case folder (its store-case.json) or folder (default: .)",
    )
    resume.add_argument("--out", type=Path, help="output segmentation (default: the job's)")
    resume.set_defaults(handler=_resume)


def _settings(args):
    from CasePortalConnectorLib.service.base import load_settings

    return load_settings(
        args.settings,
        url=args.url,
        backend=args.backend,
        timeout_s=args.timeout_s,
        model=getattr(args, "model", None),
        store_config=str(args.store_settings) if args.store_settings else None,
        store=args.store,
    )


def _info(args, progress) -> int:
    from CasePortalConnectorLib.service.runner import make_backend

    settings = _settings(args)
    backend = make_backend(settings)
    info = backend.info()
    if args.json:
        print(json.dumps(info, indent=1, sort_keys=True))
        return 0
    print(
        f"backend  {info['backend']}  {info['url']}"
        + ("  (external: de-identified data only)" if info.get("external") else "")
    )
    if info.get("name"):
        print(f"server   {info['name']} {info.get('version', '')}")
    for name, model in sorted(info["models"].items()):
        labels = ", ".join(
            f"{label}={value}" for label, value in sorted(model["labels"].items(), key=lambda kv: kv[1])
        )
        print(f"model    {name}: {labels}")
    status = info.get("totalsegmentator")
    if status and not status["available"]:
        print(f"note     {status['reason']}")
    return 0


def _print_outcome(args, outcome) -> None:
    job = outcome.job
    if args.json:
        from dataclasses import asdict

        print(json.dumps({"job": asdict(job), "reused_result": outcome.reused}, indent=1, sort_keys=True))
        return
    for warning in outcome.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(
        f"job {job.job_id}  backend {job.backend}  {job.service_url}  model {job.model} {job.model_version}"
    )
    rows = [("value", "class", "segment", "code", "voxels")]
    rows += [
        (str(s["value"]), s["class_name"], s["segment"], s["code"], str(s["voxels"])) for s in job.segments
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    latency = f"server {job.server_latency_s:.2f} s, " if job.server_latency_s is not None else ""
    print(f"{len(job.segments)} segments ({latency}round trip {job.client_latency_s or 0:.2f} s"
          + (", earlier result reused: not submitted again" if outcome.reused else "") + f"); saved {job.output}")  # fmt: skip


def _infer(args, progress) -> int:
    from CasePortalConnectorLib.service.base import InferRequest, ServiceRequestError, job_store_for
    from CasePortalConnectorLib.service.runner import (
        load_source,
        make_backend,
        run_infer,
        save_label_to_server,
    )
    from VSPCoreLib.app import VSPApplication
    from VSPCoreLib.files import Output, scene_inputs

    from .cli import _outputs

    settings = _settings(args)
    model = args.model or settings.model
    if not model:
        raise ServiceRequestError(
            "no model named.", subject="vsp service infer", fix="give --model (see `vsp service info`)."
        )
    try:
        params = json.loads(args.params)
    except json.JSONDecodeError as error:
        raise ServiceRequestError(
            f"--params is not JSON ({error.msg}).", subject="vsp service infer"
        ) from None
    if not isinstance(params, dict):
        raise ServiceRequestError("--params must be a JSON object.", subject="vsp service infer")
    if args.save_label and not args.image:
        raise ServiceRequestError(
            "--save-label sends the result back as the label of a datastore image, and no --image is given.",
            subject="vsp service infer",
            fix="infer a server image with --image ID --save-label, or leave --save-label out.",
        )
    inputs = [*scene_inputs("--volume", args.volume), *scene_inputs("--reference", args.reference)]
    _outputs(args, inputs, [Output(args.out, suffixes=OUT_SUFFIXES, what="a segmentation or a case scene")])
    store = job_store_for(args.out, jobs=args.jobs, case_folder=args.case_folder)
    backend = make_backend(settings)
    app = VSPApplication.create_headless()
    reference = load_source(app, args.reference) if args.reference is not None else None
    if bool(args.series) != bool(args.study):
        raise ServiceRequestError(
            "--series and --study go together.", subject="vsp service infer", fix="give both UIDs."
        )
    if args.series:
        from CasePortalConnectorLib.store.worklist import check_uid

        check_uid(args.study, "--study")
        check_uid(args.series, "--series")
    request = InferRequest(
        model=model,
        image_id=args.image or "",
        volume=str(args.volume or ""),
        params=params,
        study_uid=args.study or "",
        series_uid=args.series or "",
    )
    outcome = run_infer(
        app,
        backend,
        store,
        request,
        out=args.out,
        reference_volume=reference,
        progress=progress,
        session=args.session,
    )
    saved_label = args.save_label or (settings.save_label and args.image)
    if saved_label:
        save_label_to_server(backend, outcome.job, outcome.imported.segmentation_node, reference, store)
    progress.done()
    _print_outcome(args, outcome)
    if saved_label and not args.json:
        print(f"label saved back to the server's datastore: image {args.image}, tag final")
    return 0


def _jobs(args, progress) -> int:
    from dataclasses import asdict

    from CasePortalConnectorLib.service.base import open_job_store

    store = open_job_store(args.jobs)
    jobs = store.jobs()
    if args.json:
        print(json.dumps([asdict(job) for job in jobs], indent=1, sort_keys=True))
        return 0
    if not jobs:
        print(f"no jobs in {store.path}")
    for job in jobs:
        source = (
            f"series {job.series_uid}"
            if job.series_uid
            else f"image {job.image_id}"
            if job.image_id
            else f"volume {Path(job.volume).name}"
        )
        print(f"{job.job_id}  {job.state:<12} {job.backend:<10} {job.model:<20} {source}  attempts {job.attempts}  {job.updated}"
              + (f"  error: {job.error}" if job.error else ""))  # fmt: skip
    return 0


def _resume(args, progress) -> int:
    from CasePortalConnectorLib.service.base import open_job_store
    from CasePortalConnectorLib.service.runner import make_backend, resume
    from VSPCoreLib.app import VSPApplication
    from VSPCoreLib.files import Output

    from .cli import _outputs

    store = open_job_store(args.jobs)
    job = store.get(args.job)
    out = args.out or (Path(job.output) if job.output else None)
    if out is None:
        from CasePortalConnectorLib.service.base import ServiceRequestError

        raise ServiceRequestError(
            f"job {job.job_id} has no output file.", subject="vsp service resume", fix="give --out."
        )
    inputs = [("--volume", Path(job.volume))] if job.volume else []
    _outputs(args, inputs, [Output(out, suffixes=OUT_SUFFIXES, what="a segmentation or a case scene")])
    settings = _settings(args)
    if job.backend != settings.backend:
        settings.backend = job.backend
    backend = make_backend(settings)
    app = VSPApplication.create_headless()
    outcome = resume(app, backend, store, job.job_id, out=out, progress=progress)
    progress.done()
    _print_outcome(args, outcome)
    return 0
