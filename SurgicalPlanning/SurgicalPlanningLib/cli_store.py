"""`vsp store ...`: the hospital store from the command line (CasePortalConnectorLib.store).

Subcommands: ``settings`` (what is configured, optionally a connection check), ``login`` (put
the password or token into the OS keyring or a 0600 file), ``worklist`` (search studies, paged,
with planning states), ``open`` (download a series into the private cache — resuming an
interrupted download — check it, and save it as a volume or scene).

Exit codes (VSPCoreLib.errors): 2 bad input, 4 store unreachable, 5 credentials refused,
6 store error. Credentials are never taken from the command line: a prompt, the keyring, or a
file only the user can read (``--password-file``, ``VSP_STORE_PASSWORD_FILE``).

Other helpers add their subcommands with ``add_store_command`` below.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path

#: The `store` subparsers, for subcommands added by other files (save, outbox, deidentify...).
_STORE_COMMANDS: list = []


def _connection_options() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    group = options.add_argument_group("store connection (override the settings file and VSP_STORE_*)")
    group.add_argument(
        "--store-config",
        type=Path,
        metavar="FILE",
        help="store settings (JSON); default $VSP_STORE_CONFIG or ~/.config/slicervsp/store.json",
    )
    group.add_argument("--store", metavar="NAME", help='which server of the settings file\'s "servers"')
    group.add_argument(
        "--url", help="the store's base URL (Orthanc REST root), e.g. https://pacs.example.org"
    )
    group.add_argument("--dicomweb-root", help="DICOMweb path below the URL (default /dicom-web)")
    group.add_argument("--user", help="user name (the password never goes on the command line)")
    group.add_argument(
        "--password-file", type=Path, help="a file only you can read (mode 0600) holding the password"
    )
    group.add_argument(
        "--ca-bundle", type=Path, help="PEM file of the certificate authority the store's TLS uses"
    )
    return options


def register(subparsers, common: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Add `vsp store` and its subcommands to `vsp`'s subparsers."""
    parents = [common] if common is not None else []
    store = subparsers.add_parser(
        "store",
        parents=parents,
        help="the hospital store (DICOMweb/Orthanc): worklist, open a case, settings",
        description="Work with the hospital's DICOMweb store (Orthanc extras when it is one). "
        "Settings: --store-config FILE, $VSP_STORE_CONFIG or ~/.config/slicervsp/store.json, then "
        "VSP_STORE_* variables, then the flags. Exit codes: 2 bad input, 4 unreachable, "
        "5 credentials refused, 6 store error.",
    )
    commands = store.add_subparsers(dest="store_command", metavar="STORE_COMMAND")
    store.set_defaults(handler=lambda args, progress: _no_subcommand(store))
    _STORE_COMMANDS.append((commands, [*parents, _connection_options()]))

    settings = add_store_command("settings", help="show the effective store settings (no secrets)")
    settings.add_argument("--check", action="store_true", help="also connect and check the credentials")
    settings.add_argument("--json", action="store_true", help="JSON on stdout")
    settings.set_defaults(handler=_settings)

    login = add_store_command(
        "login",
        help="store the password/token in the OS keyring (or a 0600 file) and check it",
        description="Asks for the password (or bearer token / OAuth2 client secret) without echo, "
        "checks it against the store, and keeps it in the OS keyring, or in --to-file (created "
        "with mode 0600) when no keyring is available.",
    )
    login.add_argument("--to-file", type=Path, help="write the secret into this file (mode 0600) instead")
    login.add_argument(
        "--stdin",
        action="store_true",
        help="read the secret from stdin (for scripts; never from the command line)",
    )
    login.set_defaults(handler=_login)

    worklist = add_store_command(
        "worklist",
        help="search the store's studies (paged) with their planning state",
        description="Studies matching every given criterion (QIDO-RS), one page at a time. "
        "Patient names and IDs are shown only with --show-identifiers.",
    )
    worklist.add_argument("--patient-id", default="", help="PatientID (exact)")
    worklist.add_argument("--name", default="", help="patient name (substring; * and ? wildcards)")
    worklist.add_argument("--accession", default="", help="AccessionNumber (exact)")
    worklist.add_argument(
        "--from", dest="date_from", default="", metavar="DATE", help="study date from (YYYY-MM-DD)"
    )
    worklist.add_argument(
        "--to", dest="date_to", default="", metavar="DATE", help="study date to (YYYY-MM-DD)"
    )
    worklist.add_argument("--modality", default="", help="a modality in the study (CT, MR, SEG...)")
    worklist.add_argument("--description", default="", help="study description (substring)")
    worklist.add_argument("--limit", type=int, default=25, help="studies per page (default 25)")
    worklist.add_argument("--offset", type=int, default=0, help="skip this many matches (paging)")
    worklist.add_argument("--no-state", action="store_true", help="skip the planning states (faster)")
    worklist.add_argument(
        "--show-identifiers", action="store_true", help="show patient names and IDs (not shown by default)"
    )
    worklist.add_argument("--json", action="store_true", help="JSON on stdout")
    worklist.set_defaults(handler=_worklist)

    open_ = add_store_command(
        "open",
        help="download a series into the private cache (resumable, checked) and save it",
        description="Downloads the series (in one streamed request; when resuming a few "
        "instances, those one by one, several in parallel) into the cache "
        "(<cache>/<study UID>/<series UID>/<SOP UID>.dcm, a folder only you can read), resuming an "
        "interrupted download, checks every instance and the count, then loads it with the suite's "
        "DICOM importer. With --out, saves the volume (.nrrd, .nii.gz) or a scene (.mrml, .mrb).",
    )
    open_.add_argument("--study", required=True, help="StudyInstanceUID")
    open_.add_argument("--series", help="SeriesInstanceUID (default: the study's only image series)")
    open_.add_argument(
        "--cache", type=Path, help="cache folder (default ~/.cache/slicervsp/store; mode 0700)"
    )
    open_.add_argument("--out", type=Path, help="save the loaded volume or scene here")
    open_.add_argument("--download-only", action="store_true", help="download and check, do not load")
    open_.add_argument("--parallel", type=int, help="instances fetched at once (default: settings, 4)")
    open_.add_argument("--json", action="store_true", help="JSON summary on stdout")
    open_.set_defaults(handler=_open)
    from .cli_deid import register as register_deidentify

    register_deidentify()

    from . import cli_store_save  # save, open-case, outbox, lock, unlock

    cli_store_save.register()
    return store


def add_store_command(name: str, **kwargs) -> argparse.ArgumentParser:
    """A new `vsp store NAME` subcommand with the connection options and -q/--debug."""
    commands, parents = _STORE_COMMANDS[-1]
    return commands.add_parser(name, parents=parents, **kwargs)


def _no_subcommand(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


# --- helpers -------------------------------------------------------------------------------
def settings_from_args(args: argparse.Namespace):
    from CasePortalConnectorLib.store import load_settings

    return load_settings(
        args.store_config,
        server=args.store,
        url=args.url,
        dicomweb_root=args.dicomweb_root,
        username=args.user,
        password_file=str(args.password_file) if args.password_file else None,
        ca_bundle=str(args.ca_bundle) if args.ca_bundle else None,
    )


def _prompt(text: str) -> str:
    if not sys.stdin.isatty():
        from VSPCoreLib.errors import VSPError

        raise VSPError(
            "No password or token is available and there is no terminal to ask for it.",
            subject="Store credentials",
            fix="Run `vsp store login` once, or set --password-file / VSP_STORE_PASSWORD_FILE (mode 0600).",
        )
    return getpass.getpass(text, stream=sys.stderr)


def client_from_args(args: argparse.Namespace):
    """A StoreClient from the settings, the secret from file/keyring/prompt."""
    from CasePortalConnectorLib.store import StoreClient

    return StoreClient(settings_from_args(args), prompt=_prompt)


# --- handlers ------------------------------------------------------------------------------
def _settings(args, progress) -> int:
    from CasePortalConnectorLib.store.download import cache_dir
    from CasePortalConnectorLib.store.settings import keyring_available

    settings = settings_from_args(args)
    info = {
        "settings": settings.public(),
        "dicomweb_url": settings.dicomweb_url,
        "keyring": keyring_available(),
        "cache": str(cache_dir(settings)),
    }
    if args.check:
        client = client_from_args(args)
        with client:
            info["check"] = client.check_connection()
    progress.done()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info["settings"].items():
            print(f"{key:18} {value}")
        print(f"{'dicomweb_url':18} {info['dicomweb_url']}")
        print(f"{'keyring':18} {'available' if info['keyring'] else 'not available (use a 0600 file)'}")
        print(f"{'cache':18} {info['cache']}")
        if "check" in info:
            print(f"connection OK ({'Orthanc' if info['check']['orthanc'] else 'DICOMweb'})")
    return 0


def _login(args, progress) -> int:
    from CasePortalConnectorLib.store import StoreClient
    from CasePortalConnectorLib.store.settings import keyring_set, write_secret_file
    from VSPCoreLib.errors import VSPError

    settings = settings_from_args(args)
    if settings.auth == "none":
        raise VSPError("This store uses no authentication.", subject=settings.server)
    secret = sys.stdin.readline().rstrip("\n") if args.stdin else _prompt(f"Secret for {settings.server}: ")
    if not secret:
        raise VSPError("Empty secret.", subject=settings.server, fix="Type the password or token.")
    with StoreClient(settings, secret=secret) as client:
        client.check_connection()
    if args.to_file:
        path = write_secret_file(args.to_file, secret)
        where = f"{path} (mode 0600); set password_file/token_file to it"
    elif keyring_set(settings, secret):
        where = "the OS keyring"
    else:
        raise VSPError(
            "No OS keyring is available to keep the secret.",
            subject=settings.server,
            fix="Run again with --to-file ~/.config/slicervsp/store.secret (written with mode 0600).",
        )
    progress.done()
    print(f"Credentials accepted by {settings.server}; kept in {where}.")
    return 0


def _worklist(args, progress) -> int:
    from CasePortalConnectorLib.store import WorklistQuery, search_worklist
    from CasePortalConnectorLib.store.worklist import format_worklist

    query = WorklistQuery(
        patient_id=args.patient_id,
        patient_name=args.name,
        accession=args.accession,
        date_from=args.date_from,
        date_to=args.date_to,
        modality=args.modality,
        description=args.description,
    )
    filters = query.filters()  # checks the dates before connecting
    del filters
    with client_from_args(args) as client:
        progress(0.0, f"searching {client.server}")
        page = search_worklist(
            client, query, limit=args.limit, offset=args.offset, with_state=not args.no_state
        )
    progress.done()
    if args.json:
        payload = {
            "offset": page.offset,
            "limit": page.limit,
            "more": page.more,
            "studies": [study.as_dict(identifiers=args.show_identifiers) for study in page.studies],
        }
        print(json.dumps(payload, indent=2))
    else:
        print(format_worklist(page, identifiers=args.show_identifiers))
    return 0


def _open(args, progress) -> int:
    from CasePortalConnectorLib.store.download import (
        cache_dir,
        choose_series,
        download_series,
        load_cached_series,
    )
    from VSPCoreLib import storage
    from VSPCoreLib.files import Output

    from .cli import SCENE_SUFFIXES, _outputs

    if args.out is not None:
        _outputs(
            args,
            [],
            [
                Output(
                    args.out, suffixes=(*storage.VOLUME_SUFFIXES, *SCENE_SUFFIXES), what="a volume or a scene"
                )
            ],
        )
    with client_from_args(args) as client:
        chosen = choose_series(client, args.study, args.series)
        cache = cache_dir(client.settings, args.cache)
        result = download_series(
            client, args.study, chosen["series_uid"], cache, workers=args.parallel, progress=progress
        )
    summary = result.as_dict()
    summary.update(modality=chosen["modality"], description=chosen["description"])
    if not args.download_only:
        from VSPCoreLib.app import VSPApplication
        from VSPCoreLib.dicom import volume_geometry_summary

        app = VSPApplication.create_headless()
        node, volume = load_cached_series(app.scene, result.folder, name=chosen["description"] or None)
        summary["volume"] = volume_geometry_summary(volume)
        if args.out is not None:
            if args.out.suffix.lower() in (".mrml", ".mrb"):
                storage.save_scene(app, args.out)
            else:
                storage.save_node(node, args.out)
            summary["saved"] = str(args.out)
    progress.done()
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        print(
            f"series {result.series_uid}: {result.expected} instances, {result.fetched} downloaded, "
            f"{result.reused} from the cache ({summary['mb_per_s'] or 0} MB/s)\ncache: {result.folder}"
        )
        if "volume" in summary:
            print(f"volume: {summary['volume']['dimensions_ijk']} spacing {summary['volume']['spacing_mm']}")
        if "saved" in summary:
            print(f"saved: {summary['saved']}")
    return 0
