"""Loading and saving through Slicer's own logics and storage nodes.

Volumes (NRRD, NIfTI, MHA), segmentations (.seg.nrrd), models (STL/OBJ/VTK/PLY), markups
(.mrk.json) and whole scenes (.mrml with its data files, or a .mrb bundle). Files are written to
a temporary name beside the target and renamed into place, so that a failed save never leaves a
half-written file where a good one is expected. Models are written in LPS with Slicer's `SPACE=`
header convention, so that a left kidney stays on the patient's left in every tool.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import slicer
import vtk

from . import files
from .app import VSPApplication
from .errors import InputDataError, VSPError
from .files import atomic_path, copy_into, ensure_folder, temporary_directory  # noqa: F401 (re-exported)

VOLUME_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")
SEGMENTATION_SUFFIXES = (".seg.nrrd", ".seg.nhdr")
MODEL_SUFFIXES = (".stl", ".obj", ".vtk", ".vtp", ".ply")
MARKUPS_SUFFIXES = (".mrk.json",)

log = logging.getLogger(__name__)

# Coordinate systems of files (MRML itself is always RAS).
LPS = slicer.vtkMRMLStorageNode.CoordinateSystemLPS
RAS = slicer.vtkMRMLStorageNode.CoordinateSystemRAS


def _suffix(path: Path) -> str:
    """The data-type suffix, including double suffixes such as `.seg.nrrd` or `.nii.gz`."""
    name = path.name.lower()
    for suffix in (*SEGMENTATION_SUFFIXES, *MARKUPS_SUFFIXES, ".nii.gz"):
        if name.endswith(suffix):
            return suffix
    return path.suffix.lower()


def _existing_file(path: str | os.PathLike, kind: str, suffixes: tuple[str, ...]) -> Path:
    path = Path(path)
    if not path.is_file():
        raise InputDataError(f"no {kind} file here.", subject=str(path), fix="check the path.")
    if _suffix(path) not in suffixes:
        raise InputDataError(
            f"not a {kind} file this suite reads (expected {', '.join(suffixes)}).",
            subject=str(path),
            fix=f"convert it to one of {', '.join(suffixes)}.",
        )
    return path


def _messages() -> slicer.vtkMRMLMessageCollection:
    return slicer.vtkMRMLMessageCollection()


def _message_text(messages: slicer.vtkMRMLMessageCollection) -> str:
    """The gist of what Slicer said, in one line (the whole text goes to the debug log)."""
    text = messages.GetAllMessagesAsString().strip()
    if not text:
        return ""
    log.debug("Slicer said: %s", text)
    lines = [line.strip().removeprefix("- ").removeprefix("Error: ").strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    gist = lines[-1] if lines else ""
    if len(gist) > 200:
        gist = gist[:197] + "..."
    return f" Slicer said: {gist}" if gist else ""


# --- loading ---------------------------------------------------------------------------------


def _check_image_header(path: Path, kind: str) -> None:
    """Read the image header with SimpleITK first: an empty or corrupt file becomes one clear
    error here, where Slicer's readers would print pages of messages or, for a broken
    segmentation header, abort the process."""
    import SimpleITK as sitk

    if path.stat().st_size == 0:
        raise InputDataError(
            f"is an empty file (0 bytes), not a {kind}.",
            subject=str(path),
            fix="copy or export the file again; it was probably cut short.",
        )
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        log.debug("SimpleITK could not read %s: %s", path, error)
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        gist = lines[-1][:200] if lines else "unreadable header"
        raise InputDataError(
            f"could not be read as a {kind}: its header is damaged or not an image ({gist}).",
            subject=str(path),
            fix="check that the file is complete and really is the image it is named as; export it again.",
        ) from None


def load_volume(
    app: VSPApplication, path: str | os.PathLike, *, name: str | None = None, labelmap: bool = False
) -> slicer.vtkMRMLScalarVolumeNode:
    """A scalar (or label map) volume from NRRD, NIfTI or MHA, with its geometry in RAS."""
    path = _existing_file(path, "volume", VOLUME_SUFFIXES)
    _check_image_header(path, "volume")
    messages = _messages()
    options = 1 if labelmap else 0  # bit 0 of loadingOptions: label map
    file_list = vtk.vtkStringArray()
    node = app.volumes_logic.AddArchetypeVolume(str(path), name or _stem(path), options, file_list, messages)
    if node is None:
        raise InputDataError(
            "could not be read as a volume." + _message_text(messages),
            subject=str(path),
            fix="check that the file is complete and is a 3D image.",
        )
    return node


def load_segmentation(
    app: VSPApplication, path: str | os.PathLike, *, name: str | None = None
) -> slicer.vtkMRMLSegmentationNode:
    """A segmentation from `.seg.nrrd`, with segment names, colours and terminology."""
    path = _existing_file(path, "segmentation", SEGMENTATION_SUFFIXES)
    _check_image_header(path, "segmentation")
    plain = _plain_image_header(path)
    messages = _messages()
    node = app.segmentations_logic.LoadSegmentationFromFile(
        str(path), True, name or _stem(path), None, messages
    )
    if node is None:
        raise InputDataError(
            "could not be read as a segmentation." + _message_text(messages),
            subject=str(path),
            fix="check that it is a Slicer .seg.nrrd file and is complete.",
        )
    count = node.GetSegmentation().GetNumberOfSegments()
    if plain is not None and count > MAX_PLAIN_LABELS:
        # A plain image named .seg.nrrd: Slicer makes one segment per distinct value.
        app.scene.RemoveNode(node)
        raise InputDataError(
            f"not a segmentation: it has no segment header fields and {count} distinct values "
            f"({plain} voxels), which looks like an image, not a label map.",
            subject=str(path),
            fix="give a segmentation (.seg.nrrd saved by Slicer or SlicerVSP); load an image with --volume.",
        )
    return node


#: A plain label map (no Slicer segment fields) with more labels than this is taken for an image.
MAX_PLAIN_LABELS = 255


def _plain_image_header(path: Path) -> str | None:
    """The voxel type of a .seg.nrrd that lacks Slicer's segment fields (None when it has them).

    A float-typed plain NRRD is refused here at once: a segmentation's voxels are labels."""
    if not path.name.lower().endswith(".seg.nrrd"):
        return None
    with path.open("rb") as stream:
        head = stream.read(65536)
    header = head.split(b"\n\n", 1)[0].decode("latin-1", "replace")
    if not header.startswith("NRRD"):
        return None  # let Slicer's reader say what is wrong
    if "Segment0_" in header or "Segmentation_" in header:
        return None
    kind = ""
    for line in header.splitlines():
        if line.lower().startswith("type:"):
            kind = line.split(":", 1)[1].strip()
    if kind.lower() in ("float", "double"):
        raise InputDataError(
            f"not a segmentation: it has no segment header fields and {kind} voxels (an image, not labels).",
            subject=str(path),
            fix="give a segmentation (.seg.nrrd saved by Slicer or SlicerVSP); load an image with --volume.",
        )
    return kind or "unknown"


def load_model(
    app: VSPApplication, path: str | os.PathLike, *, coordinate_system: int = LPS
) -> slicer.vtkMRMLModelNode:
    """A surface model. A `SPACE=` header in the file overrides `coordinate_system`."""
    path = _existing_file(path, "model", MODEL_SUFFIXES)
    messages = _messages()
    node = app.models_logic.AddModel(str(path), coordinate_system, messages)
    if node is None or node.GetPolyData() is None or node.GetPolyData().GetNumberOfPoints() == 0:
        raise InputDataError(
            "could not be read as a surface model or holds no points." + _message_text(messages),
            subject=str(path),
            fix="check the file; STL, OBJ, PLY and VTK/VTP are read.",
        )
    return node


def load_markups(app: VSPApplication, path: str | os.PathLike) -> slicer.vtkMRMLMarkupsNode:
    """A markups node (points, line, curve, plane, ROI) from `.mrk.json`."""
    path = _existing_file(path, "markups", MARKUPS_SUFFIXES)
    messages = _messages()
    node_id = app.markups_logic.LoadMarkups(str(path), _stem(path), messages)
    node = app.scene.GetNodeByID(node_id) if node_id else None
    if node is None:
        raise InputDataError(
            "could not be read as markups." + _message_text(messages),
            subject=str(path),
            fix="check that it is a Slicer .mrk.json file.",
        )
    return node


def load_file(app: VSPApplication, path: str | os.PathLike):
    """Load any supported file by its suffix."""
    suffix = _suffix(Path(path))
    if suffix in SEGMENTATION_SUFFIXES:
        return load_segmentation(app, path)
    if suffix in MARKUPS_SUFFIXES:
        return load_markups(app, path)
    if suffix in MODEL_SUFFIXES:
        return load_model(app, path)
    if suffix in VOLUME_SUFFIXES:
        return load_volume(app, path)
    raise InputDataError(
        "unknown file type.",
        subject=str(path),
        fix="use a volume (.nrrd/.nii/.mha), .seg.nrrd, a model (.stl/.obj/.vtk/.ply) or .mrk.json.",
    )


def _stem(path: Path) -> str:
    name = path.name
    suffix = _suffix(path)
    return name[: -len(suffix)] if suffix and name.lower().endswith(suffix) else path.stem


# --- saving ----------------------------------------------------------------------------------


def save_node(node, path: str | os.PathLike, *, coordinate_system: int = LPS) -> Path:
    """Write a storable node to `path` with Slicer's storage node for that file type.

    Models and markups are written in `coordinate_system` (LPS by default, with the header
    that says so). The node's own storage node is left pointing at `path`, as Slicer does.
    """
    path = Path(path)
    storage = node.GetStorageNode()
    if storage is None:
        storage = node.CreateDefaultStorageNode()
        if storage is None:
            raise VSPError(f"{node.GetClassName()} cannot be saved to a file.", subject=node.GetName())
        node.GetScene().AddNode(storage)
        node.SetAndObserveStorageNodeID(storage.GetID())
    if hasattr(storage, "SetCoordinateSystem"):
        storage.SetCoordinateSystem(coordinate_system)
    if not storage.SupportedFileType(path.name):
        default = storage.GetDefaultWriteFileExtension() or "nrrd"
        raise VSPError(
            f"Slicer does not write {node.GetClassName()} {node.GetName()!r} as {''.join(path.suffixes) or 'a file without a suffix'}.",
            subject=str(path),
            fix=f"name the file with a suffix Slicer writes for this data, e.g. {path.name.split('.')[0]}.{default}.",
        )
    with atomic_path(path) as temporary:
        storage.SetFileName(str(temporary))
        ok = storage.WriteData(node)
        if not ok or not temporary.is_file():
            storage.SetFileName(str(path))
            raise VSPError(
                f"Slicer could not write {node.GetClassName()} {node.GetName()!r}."
                + (_message_text(storage.GetUserMessages()) if hasattr(storage, "GetUserMessages") else ""),
                subject=str(path),
                fix="check that the folder is writable and has free space.",
            )
    storage.SetFileName(str(path))
    return path


def _default_file_name(node) -> str:
    if node.IsA("vtkMRMLSegmentationNode"):
        # A detached segmentation storage node cannot tell its extension; it follows the source
        # representation (binary labelmap → .seg.nrrd, closed surface → .seg.vtm).
        labelmap = node.GetSegmentation().GetSourceRepresentationName() == "Binary labelmap"
        extension = "seg.nrrd" if labelmap else "seg.vtm"
    else:
        storage = node.GetStorageNode() or node.CreateDefaultStorageNode()
        extension = (storage.GetDefaultWriteFileExtension() if storage is not None else None) or "nrrd"
    return f"{_safe_name(node.GetName())}.{extension}"


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name) or "node"


def _free_for_us(path: Path, written: dict) -> bool:
    """A data file name this save may use: absent, or written by this suite and unchanged, and
    not an input of the running command."""
    if files.is_protected(path):
        return False
    if not path.exists():
        return True
    entry = written.get(path.name)
    return bool(entry) and path.is_file() and files.stamp(path) == entry


def storable_nodes(scene: slicer.vtkMRMLScene) -> list:
    """Nodes whose data live in files when a scene is saved."""
    nodes = []
    for index in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(index)
        if node.IsA("vtkMRMLStorableNode") and not node.GetHideFromEditors() and node.GetSaveWithScene():
            nodes.append(node)
    return nodes


def save_scene(app: VSPApplication, path: str | os.PathLike) -> Path:
    """Save the whole scene: `.mrml` (data files in `Data/` beside it) or a `.mrb` bundle."""
    path = Path(path).resolve()
    ensure_folder(path.parent)
    scene = app.scene
    if path.suffix.lower() == ".mrb":
        with atomic_path(path) as temporary:
            messages = _messages()
            if not scene.WriteToMRB(str(temporary), None, messages) or not temporary.is_file():
                raise VSPError(
                    "the scene bundle could not be written." + _message_text(messages),
                    subject=str(path),
                    fix="check that the folder is writable and the disk is not full.",
                )
        return path
    if path.suffix.lower() != ".mrml":
        raise VSPError("a scene is saved as .mrml or .mrb.", subject=str(path), fix="change the suffix.")

    # Data files go into Data/ beside the scene, named after the scene and the node, so that
    # two scenes saved into one folder never share (and overwrite) a data file. A file there
    # that this suite did not write (Data/.vsp-written.json says which it did) or an input of
    # the running command is never replaced: the node gets a free name instead.
    data_dir = path.parent / "Data"
    scene_stem = _safe_name(_stem(path))
    written = files.read_manifest(data_dir) if data_dir.is_dir() else {}
    used: set[str] = set()
    saved: list[Path] = []
    for node in storable_nodes(scene):
        name = f"{scene_stem}_{_default_file_name(node)}"
        stem, dot, extension = name.partition(".")
        candidate, counter = name, 1
        while candidate in used or not _free_for_us(data_dir / candidate, written):
            candidate = f"{stem}_{counter}{dot}{extension}"
            counter += 1
        used.add(candidate)
        saved.append(save_node(node, data_dir / candidate))
    if saved:
        files.record_written(data_dir, saved)
    # Data file names in the .mrml are relative to the scene's own folder: produce the XML for
    # the final location, then write it atomically.
    scene.SetRootDirectory(str(path.parent))
    scene.SetURL(str(path))
    scene.SetSaveToXMLString(1)
    try:
        ok = scene.Commit()
        xml = scene.GetSceneXMLString()
    finally:
        scene.SetSaveToXMLString(0)
    if not ok or not xml:
        raise VSPError("the scene file could not be written.", subject=str(path))
    with atomic_path(path) as temporary:
        temporary.write_text(xml, encoding="utf-8")
    return path


def load_scene(app: VSPApplication, path: str | os.PathLike, *, clear: bool = True) -> None:
    """Load a `.mrml` or `.mrb` scene into the application's scene."""
    path = Path(path).resolve()
    if not path.is_file():
        raise InputDataError("no scene file here.", subject=str(path), fix="check the path.")
    scene = app.scene
    messages = _messages()
    if path.suffix.lower() == ".mrb":
        ok = scene.ReadFromMRB(str(path), clear, messages)
    elif path.suffix.lower() == ".mrml":
        if clear:
            scene.Clear(False)
        scene.SetURL(str(path))
        scene.SetRootDirectory(str(path.parent))
        ok = scene.Import(messages)
    else:
        raise InputDataError(
            "a scene is a .mrml or .mrb file.", subject=str(path), fix="give the case scene (.mrb or .mrml)."
        )
    if not ok or messages.GetNumberOfMessagesOfType(vtk.vtkCommand.ErrorEvent) > 0:
        raise InputDataError(
            "the scene could not be read completely." + _message_text(messages),
            subject=str(path),
            fix="check that the scene's data files are beside it (Data/) and complete.",
        )
