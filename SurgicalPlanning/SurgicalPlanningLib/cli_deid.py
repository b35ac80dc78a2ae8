"""`vsp store deidentify`: a case de-identified for sharing outside the hospital.

PS3.15 Annex E Basic Profile (CasePortalConnectorLib.deid), into a folder or a zip; the
pseudonym key stays in the user's private folder. Exit code 2 for a bad input (a folder that is
not a case, burned-in annotation, a key readable by others, an output inside the input or the
key inside the output).
"""

from __future__ import annotations

import json
from pathlib import Path


def register() -> None:
    """Add `deidentify` to the `vsp store` subcommands (called by cli_store.register)."""
    from .cli_store import add_store_command

    command = add_store_command(
        "deidentify",
        help="de-identify a case (PS3.15 Basic Profile) into a folder or a zip for sharing",
        description="Reads every DICOM file under INPUT_FOLDER (CT, SEG, models; encapsulated PDF "
        "reports are left out) and writes de-identified copies (PS3.15 Annex E Basic Application "
        "Level Confidentiality Profile): identifying attributes removed, emptied or replaced, private "
        "attributes removed, UIDs remapped consistently (the SEG still references its CT), the patient "
        "named by a pseudonym. The pseudonym key (original <-> pseudonym, date offset, UID map) is kept "
        "in your private folder (mode 0600), never in the output. --push sends the de-identified "
        "copies to another DICOMweb store (STOW-RS).",
    )
    command.add_argument("input", type=Path, metavar="INPUT_FOLDER", help="the case's DICOM folder")
    command.add_argument(
        "--out", type=Path, required=True, help="a new folder, or a .zip file, for the de-identified copies"
    )
    command.add_argument(
        "--keep-dates-shifted",
        action="store_true",
        help="Retain Longitudinal Temporal Information with Modified Dates: shift every date by the "
        "patient's offset (kept in the key) instead of removing it",
    )
    command.add_argument(
        "--clean-descriptors",
        action="store_true",
        help="Clean Descriptors: keep descriptions and comments with the case's identifying values "
        "cut out, instead of removing them",
    )
    command.add_argument(
        "--key-file",
        type=Path,
        help="the pseudonym key (default $VSP_KEY_DIR/deid-key.json or "
        "~/.local/share/SlicerVSP/private/deid-key.json); reusing it keeps pseudonyms and UIDs",
    )
    command.add_argument(
        "--push",
        metavar="URL_OR_NAME",
        help="then send the de-identified copies (STOW-RS) to this store: a server name of the store "
        "settings file (its own URL and credentials), or a base URL (its DICOMweb service at "
        "--dicomweb-root; --user, --password-file, --ca-bundle for it; the hospital store's "
        "settings and VSP_STORE_* are never used for it)",
    )
    command.add_argument("--json", action="store_true", help="JSON summary on stdout")
    command.set_defaults(handler=_deidentify)


def _push_settings(args):
    """The push target's settings: a named server of the settings file (without the
    environment's VSP_STORE_*, which describe the hospital store), or a URL with only the
    options given here — so the hospital store's credentials never go to a partner."""
    import os

    from CasePortalConnectorLib.store import StoreSettings, load_settings

    target = args.push.strip()
    if target.startswith(("http://", "https://")):
        return StoreSettings(
            url=target,
            dicomweb_root=args.dicomweb_root or "/dicom-web",
            auth="basic" if args.user else "none",
            username=args.user or "",
            password_file=str(args.password_file) if args.password_file else "",
            ca_bundle=str(args.ca_bundle) if args.ca_bundle else "",
            name="push target",
        ).check()
    config = args.store_config or os.environ.get("VSP_STORE_CONFIG")
    return load_settings(config, server=target, environ={}).check()


def _push(args, folder: Path, progress) -> dict:
    from CasePortalConnectorLib.cases import CaseStore, push_instances
    from CasePortalConnectorLib.store import StoreClient

    from .cli_store import _prompt

    files = sorted(path for path in folder.rglob("*.dcm") if path.is_file())
    with StoreClient(_push_settings(args), prompt=_prompt) as client:
        store = CaseStore.from_client(client)
        with client.translate("the push of the de-identified case"):
            summary = push_instances(store, files, progress=progress)
    summary["server"] = client.server
    if summary["refused"]:
        from VSPCoreLib.errors import ServerResponseError

        raise ServerResponseError(
            f"The store refused {len(summary['refused'])} of {summary['instances']} de-identified instances.",
            subject=client.server,
            fix="See the store's log; push again (instances it holds already are replaced, not doubled).",
        )
    return summary


def _deidentify(args, progress) -> int:
    from CasePortalConnectorLib.deid import DeidOptions, deidentify_case
    from VSPCoreLib.files import Output

    from .cli import _outputs

    as_zip = args.out.suffix.lower() == ".zip"
    output = (
        Output(args.out, suffixes=(".zip",), what="a zip file") if as_zip else Output(args.out, folder=True)
    )
    _outputs(args, [args.input] if args.input.exists() else [], [output])
    result = deidentify_case(
        args.input,
        args.out,
        options=DeidOptions(
            keep_dates_shifted=args.keep_dates_shifted, clean_descriptors=args.clean_descriptors
        ),
        key_path=args.key_file,
        progress=progress,
    )
    summary = result.to_dict()
    if args.push:
        if as_zip:
            import tempfile
            import zipfile

            with tempfile.TemporaryDirectory(prefix="vsp-push-") as folder:  # mode 0700
                with zipfile.ZipFile(result.out) as archive:
                    names = [name for name in archive.namelist() if name.endswith(".dcm")]
                    for number, name in enumerate(names):  # numbered here: a member name is no path
                        (Path(folder) / f"{number:05d}.dcm").write_bytes(archive.read(name))
                summary["push"] = _push(args, Path(folder), progress)
        else:
            summary["push"] = _push(args, result.out, progress)
    progress.done()
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"de-identified {summary['written']} files of {summary['patients']} patient(s) into {result.out}"
        )
        print(
            f"profile: {summary['profile']}"
            + (f"; options: {', '.join(result.options)}" if result.options else "")
        )
        for skipped in result.skipped:
            print(f"left out: {skipped}")
        print(f"pseudonym key (keep it private, never share it): {result.key_path}")
        if args.push:
            push = summary["push"]
            print(f"pushed {push['stored']} instances to {push['server']} in {push['requests']} request(s)")
    return 0
