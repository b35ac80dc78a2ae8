"""`vsp store save`, `open-case`, `outbox`, `lock`, `unlock`: saving cases through the durable
outbox, reading a saved case back, and case locks (CasePortalConnectorLib.cases / .outbox).

Exit codes besides cli_store's (2 bad input, 4 unreachable, 5 credentials, 6 store error):
7 the case is locked by another planner, or the save met a conflict (both versions kept).
A save whose upload could not finish exits 4, its items waiting in the outbox.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

EXIT_CONFLICT = 7


def register() -> None:
    """Add the subcommands to `vsp store` (called by cli_store.register)."""
    from .cli_store import add_store_command

    save = add_store_command(
        "save",
        help="save a case: SEG, models, report, plan and manifest, through the outbox",
        description="Writes the segmentation as DICOM SEG, the STL models as Encapsulated STL, the "
        "report as Encapsulated PDF and a case record (Raw Data instance holding plan.json and the "
        "case manifest), all in the source study; queues them in the durable outbox and sends them "
        "(on Orthanc also the plan and manifest as study attachments vsp-plan/vsp-manifest). When the "
        "store holds a plan other than the one this workstation opened, ours does not replace it "
        "(exit 7): both versions are kept. An upload that cannot finish stays queued (exit 4).",
    )
    save.add_argument("--dicom", required=True, type=Path, help="folder of the source CT series")
    save.add_argument("--plan", required=True, type=Path, help="the plan.json")
    save.add_argument("--seg", type=Path, help="the segmentation (.seg.nrrd) to save as DICOM SEG")
    save.add_argument("--model", type=Path, action="append", default=[], help="an STL model (repeatable)")
    save.add_argument("--report", type=Path, help="the report (PDF)")
    save.add_argument(
        "--case-folder",
        type=Path,
        help="the folder `vsp store open-case` wrote: its plan version is the one we started from; "
        "the segmentation-service jobs its manifest lists are saved in the case manifest",
    )
    save.add_argument(
        "--base-version",
        help="the plan version (SHA-256) this workstation started from; 'none' for a new case",
    )
    save.add_argument("--owner", help="who saves (default user@host; never a patient identifier)")
    save.add_argument("--queue-only", action="store_true", help="queue in the outbox, do not send now")
    _outbox_option(save)
    save.add_argument("--json", action="store_true", help="JSON summary on stdout")
    save.set_defaults(handler=_save)

    open_case = add_store_command(
        "open-case",
        help="download a saved case's plan, manifest, SEG, models and report (hash-checked)",
        description="Writes plan.json, manifest.json, results/<SOP UID>.dcm and store-case.json "
        "(the plan version this workstation starts from, used by `vsp store save --case-folder`) "
        "into --out. On Orthanc the current plan is the vsp-plan attachment; on a DICOMweb-only "
        "store, the newest case record.",
    )
    open_case.add_argument("--study", required=True, help="StudyInstanceUID")
    open_case.add_argument("--out", required=True, type=Path, help="the case folder")
    open_case.add_argument("--plan-only", action="store_true", help="only the plan and manifest")
    open_case.add_argument("--json", action="store_true", help="JSON summary on stdout")
    open_case.set_defaults(handler=_open_case)

    outbox = add_store_command(
        "outbox",
        help="the uploads waiting in the outbox: list, retry (send now), drop",
        description="list: every queued item with its state, attempts, next try and last error. "
        "retry [ID...]: send the pending and failed items now. drop ID...: remove items from the "
        "queue (their copies are deleted; the rows stay as a record).",
    )
    outbox.add_argument("action", nargs="?", choices=("list", "retry", "drop"), default="list")
    outbox.add_argument("ids", nargs="*", type=int, help="item ids (retry: default all; drop: required)")
    outbox.add_argument("--all", action="store_true", help="list: also sent and dropped items")
    _outbox_option(outbox)
    outbox.add_argument("--json", action="store_true", help="JSON on stdout")
    outbox.set_defaults(handler=_outbox)

    lock = add_store_command(
        "lock",
        help="lock a case for planning (owner user@host, expiry), or show its lock",
        description="Takes the case lock (Orthanc study metadata VSPLock) for --hours, or renews "
        "ours. A lock held by another planner is refused naming its owner and expiry (exit 7); an "
        "expired one is taken over. --show only prints the lock.",
    )
    lock.add_argument("--study", required=True, help="StudyInstanceUID")
    lock.add_argument("--hours", type=float, default=4.0, help="how long the lock lasts (default 4)")
    lock.add_argument("--owner", help="lock owner (default user@host)")
    lock.add_argument("--show", action="store_true", help="only show the current lock")
    lock.add_argument("--json", action="store_true", help="JSON on stdout")
    lock.set_defaults(handler=_lock)

    unlock = add_store_command("unlock", help="remove our case lock (--force: another's)")
    unlock.add_argument("--study", required=True, help="StudyInstanceUID")
    unlock.add_argument("--owner", help="lock owner (default user@host)")
    unlock.add_argument("--force", action="store_true", help="remove another planner's lock")
    unlock.set_defaults(handler=_unlock)


def _outbox_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--outbox",
        type=Path,
        help="the outbox database (default $VSP_OUTBOX or <user data folder>/SlicerVSP/outbox/outbox.sqlite)",
    )


def _case_store(args):
    from CasePortalConnectorLib.cases import CaseStore

    from .cli_store import client_from_args

    client = client_from_args(args)
    args._resources.callback(client.close)
    with client.translate("the connection check"):
        store = CaseStore.from_client(client)
    return client, store


def _base_version(args) -> str | None:
    from CasePortalConnectorLib.cases import read_case_state
    from VSPCoreLib.errors import VSPError

    if args.base_version is not None:
        return None if args.base_version.lower() == "none" else args.base_version
    if args.case_folder is not None:
        state = read_case_state(args.case_folder)
        if state is None:
            raise VSPError(
                "holds no store-case.json.",
                subject=str(args.case_folder),
                fix="open the case with `vsp store open-case --out FOLDER` first, or give --base-version.",
            )
        return state.get("plan_version")
    raise VSPError(
        "say which plan version this workstation started from.",
        subject="vsp store save",
        fix="give --case-folder (from `vsp store open-case`), or --base-version none for a new case.",
    )


def _unreachable(client, report) -> None:
    from VSPCoreLib.errors import CredentialsError, ServerUnreachableError

    if not report.unreachable:
        return
    kind = CredentialsError if "credentials" in report.unreachable else ServerUnreachableError
    raise kind(
        f"{report.unreachable}; {report.pending} item(s) wait in the outbox and nothing is lost.",
        subject=client.server,
        fix="run `vsp store outbox retry` when the store is back (`vsp store outbox` lists them).",
    )


def _save(args, progress) -> int:
    from CasePortalConnectorLib.cases import read_case_state, save_case
    from CasePortalConnectorLib.outbox import Outbox
    from CasePortalConnectorLib.service.base import manifest_jobs

    base = _base_version(args)
    jobs = manifest_jobs(read_case_state(args.case_folder)) if args.case_folder is not None else []
    client, store = _case_store(args)
    with Outbox(args.outbox) as outbox:
        result = save_case(
            store,
            outbox,
            source=args.dicom,
            plan=args.plan,
            segmentation=args.seg,
            models=args.model,
            report=args.report,
            base_version=base,
            owner=args.owner,
            send=not args.queue_only,
            progress=progress,
            service_jobs=jobs,
        )
        progress.done()
        summary = result.to_dict()
        if args.json:
            print(json.dumps(summary, indent=2, default=str))
        else:
            sent = result.send
            print(f"study {result.study_uid}: {len(result.item_ids)} items queued (batch {result.batch})")
            print(f"plan version {result.plan_version} (started from {result.base_version or 'none'})")
            if sent is not None:
                print(
                    f"sent {len(sent.sent)}, already in the store {len(sent.already_there)}, "
                    f"failed {len(sent.failed)}, waiting {sent.pending}"
                )
        if result.send is not None:
            _unreachable(client, result.send)
        if result.conflict:
            print(f"vsp store save: CONFLICT: {result.conflict}")
            return EXIT_CONFLICT
        if result.send is not None and result.send.failed:
            print("vsp store save: some items were refused by the store; see `vsp store outbox`.")
            return 6
    return 0


def _open_case(args, progress) -> int:
    from CasePortalConnectorLib.cases import open_saved_case

    client, store = _case_store(args)
    with client.translate(f"study {args.study}"):
        state = open_saved_case(store, args.study, args.out, results=not args.plan_only)
    progress.done()
    if args.json:
        print(json.dumps(state, indent=2))
    elif state["plan_version"] is None:
        print(
            f"study {args.study}: no saved plan yet (a new case); recorded in {args.out / 'store-case.json'}"
        )
    else:
        print(f"study {args.study}: plan version {state['plan_version']}")
        for label, path in state["files"].items():
            print(f"  {label:<24}{path}")
    return 0


def _time(value: float | None) -> str:
    if not value:
        return "-"
    return dt.datetime.fromtimestamp(value).strftime("%Y-%m-%d %H:%M:%S")


def _outbox(args, progress) -> int:
    from CasePortalConnectorLib.outbox import FAILED, PENDING, Outbox
    from VSPCoreLib.errors import VSPError

    with Outbox(args.outbox) as outbox:
        if args.action == "drop":
            if not args.ids:
                raise VSPError(
                    "give the ids of the items to drop.",
                    subject="vsp store outbox drop",
                    fix="see their ids with `vsp store outbox list`.",
                )
            print(f"dropped {outbox.drop(args.ids)} item(s)")
            return 0
        if args.action == "retry":
            outbox.retry(args.ids or None)
            client, store = _case_store(args)
            report = outbox.send(store, ids=args.ids or None, progress=progress)
            progress.done()
            if args.json:
                print(json.dumps(report.to_dict(), indent=2))
            else:
                print(
                    f"sent {len(report.sent)}, already in the store {len(report.already_there)}, "
                    f"failed {len(report.failed)}, waiting {report.pending}"
                )
                for item_id, note in report.notes.items():
                    print(f"  item {item_id}: {note}")
            _unreachable(client, report)
            if any(note.startswith("conflict") for note in report.notes.values()):
                return EXIT_CONFLICT
            return 6 if report.failed else 0
        states = None if args.all else [PENDING, FAILED]
        items = outbox.items(states=states)
        if args.json:
            print(json.dumps([item.to_dict() for item in items], indent=2))
            return 0
        print(f"outbox {outbox.path}: {len(items)} item(s){'' if args.all else ' waiting'}")
        header = f"{'id':>5}  {'state':<8}{'tries':>5}  {'next try':<20}{'what':<60}  last error / result"
        print(header)
        for item in items:
            note = item.last_error if item.state in (PENDING, FAILED) else item.result
            when = _time(item.next_try) if item.state == PENDING else _time(item.done)
            print(
                f"{item.id:>5}  {item.state:<8}{item.attempts:>5}  {when:<20}{item.label()[:60]:<60}  {note}"
            )
    return 0


def _lock(args, progress) -> int:
    from CasePortalConnectorLib.cases import acquire_lock, read_lock

    client, store = _case_store(args)
    with client.translate(f"the lock of study {args.study}"):
        lock = (
            read_lock(store, args.study)
            if args.show
            else acquire_lock(store, args.study, owner=args.owner, ttl_s=args.hours * 3600)
        )
    if args.json:
        print(
            json.dumps(
                None
                if lock is None
                else {"owner": lock.owner, "expires": lock.expires, "expired": lock.expired}
            )
        )
    elif lock is None:
        print(f"study {args.study}: not locked")
    else:
        print(
            f"study {args.study}: locked by {lock.owner} until {lock.expires}"
            + (" (expired)" if lock.expired else "")
        )
    return 0


def _unlock(args, progress) -> int:
    from CasePortalConnectorLib.cases import release_lock

    client, store = _case_store(args)
    with client.translate(f"the lock of study {args.study}"):
        removed = release_lock(store, args.study, owner=args.owner, force=args.force)
    print(f"study {args.study}: {'unlocked' if removed else 'was not locked'}")
    return 0
