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
        "in your private folder (mode 0600), never in the output. Pushing to another DICOMweb "
        "endpoint is not done yet: upload the folder with the store commands.",
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
    command.add_argument("--json", action="store_true", help="JSON summary on stdout")
    command.set_defaults(handler=_deidentify)


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
    progress.done()
    summary = result.to_dict()
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
    return 0
