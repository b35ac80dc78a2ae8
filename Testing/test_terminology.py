"""Terminology: the planning structures' codes, AI model labels, and the Slicer context file."""

from __future__ import annotations

import json

import pytest

from VSPCoreLib import terminology
from VSPCoreLib.errors import InputDataError
from VSPCoreLib.terminology import LEFT, RIGHT, Code

# The structures the suite plans on (issue 3) and the keys that stand for them.
PLANNING_STRUCTURES = {
    "kidney": ("kidney_left", "kidney_right"),
    "renal cortex": ("kidney_left_cortex", "kidney_right_cortex"),
    "tumour / mass": ("tumour", "renal_tumour", "renal_mass"),
    "renal artery": ("renal_artery_left", "renal_artery_right", "renal_arteries"),
    "renal vein": ("renal_vein_left", "renal_vein_right"),
    "collecting system": ("collecting_system_left", "collecting_system_right"),
    "ureter": ("ureter_left", "ureter_right"),
    "liver": ("liver",),
    "hepatic veins": ("hepatic_veins",),
    "portal vein": ("portal_vein",),
    "hepatic artery": ("hepatic_artery",),
    "IVC": ("ivc",),
    "aorta": ("aorta",),
    "spleen": ("spleen",),
    "pancreas": ("pancreas",),
    "bone": ("bone",),
    "skin": ("skin",),
}

# SNOMED CT type codes as the sources give them (see the module docstring for the files):
# key -> (category, type, modifier, region).
EXPECTED_CODES = {
    "kidney_left": ("123037004", "64033007", "7771000", None),
    "kidney_right": ("123037004", "64033007", "24028007", None),
    "kidney_left_cortex": ("123037004", "50403003", "7771000", None),
    "tumour": ("49755003", "108369006", None, "64033007"),
    "renal_tumour": ("49755003", "108369006", None, "64033007"),
    "renal_mass": ("49755003", "4147007", None, "64033007"),
    "renal_artery_left": ("123037004", "2841007", "7771000", None),
    "renal_vein_right": ("123037004", "56400007", "24028007", None),
    "collecting_system_left": ("123037004", "25990002", "7771000", None),
    "ureter_left": ("123037004", "87953007", "7771000", None),
    "ureter_right": ("123037004", "87953007", "24028007", None),
    "liver": ("123037004", "10200004", None, None),
    "hepatic_veins": ("123037004", "8993003", None, None),
    "portal_vein": ("123037004", "32764006", None, None),
    "hepatic_artery": ("123037004", "76015000", None, None),
    "ivc": ("123037004", "64131007", None, None),
    "aorta": ("123037004", "15825003", None, None),
    "spleen": ("123037004", "78961009", None, None),
    "pancreas": ("123037004", "15776009", None, None),
    "bone": ("85756007", "272673000", None, None),
    "skin": ("85756007", "39937001", None, None),
}


def _codes(key: str) -> tuple:
    t = terminology.term(key)
    return (
        t.category.value,
        t.type.value,
        t.modifier.value if t.modifier else None,
        t.region.value if t.region else None,
    )


# ------------------------------------------------------------------------------------------
# The table
# ------------------------------------------------------------------------------------------


def test_every_planning_structure_has_a_verified_code():
    for structure, keys in PLANNING_STRUCTURES.items():
        for key in keys:
            t = terminology.term(key)
            assert t.type.scheme == "SCT", (structure, key)
            assert t.source and "private" not in t.source, (structure, key)
    for key, expected in EXPECTED_CODES.items():
        assert _codes(key) == expected, key


def test_lateral_structures_carry_laterality_modifiers():
    for key, t in terminology.STRUCTURES.items():
        words = key.split("_")
        # A side is a modifier, or part of the concept itself ("Middle lobe of right lung").
        if "left" in words:
            assert LEFT.same_concept(t.modifier or t.region_modifier) or "left" in t.type.meaning.lower(), key
        elif "right" in words:
            assert RIGHT.same_concept(t.modifier or t.region_modifier) or "right" in t.type.meaning.lower(), (
                key
            )
    for side, modifier in (("left", LEFT), ("right", RIGHT)):
        for stem in ("ureter", "adrenal_gland", "renal_artery", "renal_vein", "kidney"):
            assert modifier.same_concept(terminology.term(f"{stem}_{side}").modifier)


def test_codes_named_as_dicom_are_in_the_dicom_context_groups():
    """Every code whose source cites a DICOM CID is in that CID (PS3.16, as pydicom ships it)."""
    from pydicom.sr import _cid_dict
    from pydicom.sr._concepts_dict import concepts

    by_value: dict[str, set[int]] = {}
    for variants in concepts["SCT"].values():
        for value, (_, cids) in variants.items():
            by_value.setdefault(value, set()).update(cids)
    checked = 0
    for key, t in terminology.STRUCTURES.items():
        for cid in (int(part.split()[-1]) for part in t.source.split(",") if "DICOM CID" in part):
            assert cid in _cid_dict.cid_concepts, (key, cid)
            assert cid in by_value.get(t.type.value, set()), f"{key}: {t.type} not in CID {cid}"
            checked += 1
    assert checked >= 25
    # Laterality (CID 244) and the categories (CID 7150) as well.
    assert 244 in by_value[LEFT.value] and 244 in by_value[RIGHT.value]
    for category in (terminology.TISSUE, terminology.MORPHOLOGICALLY_ALTERED):
        assert 7150 in by_value[category.value]


def test_code_not_name_decides_which_structure_it_is():
    for key in ("ureter_left", "hepatic_veins", "renal_tumour", "kidney_cyst", "vertebra_L1", "bone"):
        entry = terminology.terminology_entry(key)
        assert [t.key for t in terminology.find_by_terminology_entry(entry)] == [key], key
    # A renal tumour without a side is not the left renal tumour of the phantom, and vice versa.
    assert [
        t.key for t in terminology.find_by_terminology_entry(terminology.terminology_entry("tumour"))
    ] == ["tumour"]
    ureters = terminology.find_by_code(Code("SCT", "87953007", "any text"))
    assert {t.key for t in ureters} == {"ureter_left", "ureter_right"}


# ------------------------------------------------------------------------------------------
# AI model labels
# ------------------------------------------------------------------------------------------

# From TotalSegmentator's totalsegmentator_snomed_mapping.csv: name -> (type, modifier, region).
TOTALSEGMENTATOR_CSV = {
    "kidney_left": ("64033007", "7771000", None),
    "kidney_right": ("64033007", "24028007", None),
    "aorta": ("15825003", None, None),
    "inferior_vena_cava": ("64131007", None, None),
    "liver": ("10200004", None, None),
    "spleen": ("78961009", None, None),
    "pancreas": ("15776009", None, None),
    "gallbladder": ("28231008", None, None),
    "adrenal_gland_left": ("23451007", "7771000", None),
    "portal_vein_and_splenic_vein": ("110765007", None, None),
    "vertebrae_L1": ("66794005", None, None),
    "vertebrae_L5": ("49668003", None, None),
    "vertebrae_T12": ("23215003", None, None),
    "vertebrae_S1": ("65985001", None, None),
    "sacrum": ("54735007", None, None),
    "spinal_cord": ("2748008", None, None),
    "iliopsoas_left": ("68455001", "7771000", None),
    "liver_tumor": ("108369006", None, "10200004"),
    "liver_vessels": ("59820001", None, "10200004"),
    "kidney_cyst_left": ("367643001", None, "64033007"),
}


def test_totalsegmentator_labels_get_totalsegmentators_codes():
    for name, (type_value, modifier, region) in TOTALSEGMENTATOR_CSV.items():
        t = terminology.structure_for_ai_label(name, "totalsegmentator")
        assert t is not None, name
        assert t.type.value == type_value, name
        assert (t.modifier.value if t.modifier else None) == modifier, name
        assert (t.region.value if t.region else None) == region, name
    assert terminology.structure_for_ai_label("inferior_vena_cava", "totalsegmentator").key == "ivc"
    # Every rib its own structure, with the rib's own SNOMED CT code (Seventh rib) and side.
    rib = terminology.structure_for_ai_label("rib_right_7", "totalsegmentator")
    assert (rib.key, rib.name, rib.type.value, rib.modifier.value) == (
        "rib_right_7",
        "Rib 7, right",
        "24915002",
        RIGHT.value,
    )
    # Names are compared without regard to case and separators.
    assert terminology.structure_for_ai_label("  Kidney-Left ", "totalsegmentator").key == "kidney_left"
    assert terminology.structure_for_ai_label("VERTEBRAE_l1").key == "vertebra_L1"


def test_labels_that_are_not_our_structures_map_to_nothing():
    for name in ("kidney", "kidneys", "lung", "tumor", "background", ""):
        assert terminology.structure_for_ai_label(name) is None, name


def test_monai_labels():
    monai = "monai"
    assert terminology.structure_for_ai_label("spleen", monai).key == "spleen"
    # MONAI Label's radiology "segmentation" model: current and older label spellings.
    assert terminology.structure_for_ai_label("kidney_left", monai).key == "kidney_left"
    assert terminology.structure_for_ai_label("left kidney", monai).key == "kidney_left"
    assert terminology.structure_for_ai_label("inferior vena cava", monai).key == "ivc"
    assert terminology.structure_for_ai_label("portal vein and splenic vein", monai).key == (
        "portal_vein_and_splenic_vein"
    )
    assert terminology.structure_for_ai_label("right adrenal gland", monai).key == "adrenal_gland_right"
    # "tumor" means a renal tumour only in the kidney tumour model; it needs the model named.
    assert terminology.structure_for_ai_label("tumor", monai) is None
    assert terminology.structure_for_ai_label("tumor") is None
    assert (
        terminology.structure_for_ai_label("tumor", "monai:kidney_tumor_segmentation").key == "renal_tumour"
    )
    assert terminology.structure_for_ai_label("vertebrae_L3", "monai:wholeBody_ct_segmentation").key == (
        "vertebra_L3"
    )
    with pytest.raises(InputDataError, match="unknown MONAI model"):
        terminology.structure_for_ai_label("spleen", "monai:no_such_model")
    with pytest.raises(InputDataError, match="unknown AI model"):
        terminology.structure_for_ai_label("spleen", "nnunet")


def test_ai_tables_point_at_real_structures_and_agree_with_each_other():
    seen: dict[str, str] = {}
    tables = [terminology.ai_label_table("totalsegmentator")] + [
        terminology.ai_label_table(f"monai:{model}") for model in terminology.MONAI_MODEL_LABELS
    ]
    for table in tables:
        assert table
        for name, key in table.items():
            assert key in terminology.STRUCTURES, (name, key)
            normalised = name.strip().lower().replace(" ", "_").replace("-", "_")
            assert seen.setdefault(normalised, key) == key, f"{name!r} maps to two structures"


# Class values of TotalSegmentator's "total" task (v2), spot checks from map_to_binary.py.
TOTAL_V2_VALUES = {
    "spleen": 1,
    "kidney_right": 2,
    "kidney_left": 3,
    "kidney_cyst_left": 23,
    "vertebrae_L1": 31,
    "heart": 51,
    "aorta": 52,
    "inferior_vena_cava": 63,
    "rib_left_1": 92,
    "rib_right_12": 115,
    "costal_cartilages": 117,
}


def test_every_totalsegmentator_total_class_is_coded_with_its_own_name():
    values, family = terminology.model_label_values("totalsegmentator")
    assert family == "totalsegmentator"
    assert sorted(values) == list(range(1, 118))  # 117 classes, values 1..117
    for name, value in TOTAL_V2_VALUES.items():
        assert values[value] == name
    terms = {name: terminology.structure_for_ai_label(name, "totalsegmentator") for name in values.values()}
    assert all(t is not None for t in terms.values()), [n for n, t in terms.items() if t is None]
    # Distinct classes never merge: 117 classes, 117 structures, 117 display names.
    assert len({t.key for t in terms.values()}) == 117
    assert len({t.name for t in terms.values()}) == 117
    for name, t in terms.items():
        assert t.type.scheme == "SCT" and t.type.value.isdigit(), name
        assert "TotalSeg" in t.source or "Slicer" in t.source or "DICOM" in t.source, name
        side = "left" if "_left" in name else "right" if "_right" in name else None
        if side:
            assert side in t.name.lower(), name
            expected = LEFT if side == "left" else RIGHT
            assert expected.same_concept(t.modifier or t.region_modifier) or side in t.type.meaning.lower(), (
                name
            )
    assert terms["vertebrae_L1"].name == "Vertebra L1"
    assert terms["rib_left_3"].name == "Rib 3, left" and terms["rib_left_3"].type.value == "25888004"
    assert terms["kidney_cyst_right"].region_modifier.same_concept(RIGHT)
    # The twelve ribs of a side carry twelve different SNOMED CT codes.
    assert len({terms[f"rib_left_{n}"].type.value for n in range(1, 13)}) == 12


def test_label_value_tables_of_the_models():
    v1, _ = terminology.model_label_values("totalsegmentator:total_v1")
    assert len(v1) == 104 and v1[18] == "vertebrae_L5" and v1[104] == "urinary_bladder"
    monai, family = terminology.model_label_values("monai")
    assert monai == v1 and family == "monai:segmentation_full_CT"
    tumour, family = terminology.model_label_values("monai:kidney_tumor_segmentation")
    assert tumour == {1: "kidneys", 2: "tumor"}
    assert terminology.structure_for_ai_label("tumor", family).key == "renal_tumour"
    assert terminology.structure_for_ai_label("kidneys", family) is None
    with pytest.raises(InputDataError, match="unknown label table"):
        terminology.model_label_values("nnunet")
    with pytest.raises(InputDataError, match="unknown label table"):
        terminology.model_label_values("totalsegmentator:no_such_task")


def test_tables_are_data_files_listed_for_installation():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    cmake = (root / "VSPCore" / "CMakeLists.txt").read_text()
    for path in (terminology.STRUCTURES_FILE, terminology.AI_LABELS_FILE, terminology.CONTEXT_FILE):
        assert path.is_file()
        json.loads(path.read_text(encoding="utf-8"))
        assert f"VSPCoreLib/terminology/{path.name}" in cmake
    data = json.loads(terminology.STRUCTURES_FILE.read_text(encoding="utf-8"))
    assert len(data["structures"]) == len(terminology.STRUCTURES)
    assert all(entry["source"] for entry in data["structures"])


def test_entries_are_written_and_read_by_slicers_terminology_logic():
    entry = terminology.terminology_entry("kidney_left")
    assert entry == (
        "Segmentation category and type - SlicerVSP abdominal planning~SCT^123037004^Anatomical Structure"
        "~SCT^64033007^Kidney~SCT^7771000^Left~Anatomic codes - DICOM master list~^^~^^"
    )
    parsed = terminology.parse_terminology_entry(entry)
    assert parsed["type"] == Code("SCT", "64033007", "Kidney") and parsed["modifier"] == LEFT
    assert parsed["region"] is None and parsed["context"] == terminology.TERMINOLOGY_CONTEXT
    cyst = terminology.parse_terminology_entry(terminology.terminology_entry("kidney_cyst_left"))
    assert cyst["region"].value == "64033007" and cyst["region_modifier"] == LEFT
    for bad in ("", "a~b", "c~SCT^1^X~SCT^2~^^~r~^^~^^", "c~SCT^1^X~SCT^2^Y~^^~r~^^~^^~extra"):
        with pytest.raises(InputDataError, match="cannot read"):
            terminology.parse_terminology_entry(bad)
    with pytest.raises(InputDataError, match="incomplete code"):
        terminology.parse_terminology_entry("c~SCT^1^X~SCT^2^~^^~r~^^~^^")


# ------------------------------------------------------------------------------------------
# The Slicer terminology context file
# ------------------------------------------------------------------------------------------


def test_committed_context_file_is_what_the_table_generates():
    assert terminology.CONTEXT_FILE.is_file(), "run: python -m VSPCoreLib.terminology --write"
    assert terminology.CONTEXT_FILE.read_text(encoding="utf-8") == terminology.terminology_context_text(), (
        "data/SlicerVSP.term.json drifted from the terminology table: "
        "run `python -m VSPCoreLib.terminology --write`"
    )
    assert json.loads(terminology.CONTEXT_FILE.read_text()) == terminology.slicer_terminology_context()


def test_write_and_check_command(tmp_path, capsys):
    path = tmp_path / "out" / "SlicerVSP.term.json"
    assert terminology.main(["--check", "--path", str(path)]) == 1  # missing
    assert terminology.main(["--write", "--path", str(path)]) == 0
    assert path.read_text() == terminology.CONTEXT_FILE.read_text()
    assert terminology.main(["--check", "--path", str(path)]) == 0
    path.write_text(path.read_text().replace("Kidney", "Kidny"))
    assert terminology.main(["--check", "--path", str(path)]) == 1
    assert "--write" in capsys.readouterr().err
    assert not list(path.parent.glob(".*tmp")), "no temporary file left behind"


def _find_type(logic, context: str, category_value: str, type_value: str):
    import slicer

    for c in range(logic.GetNumberOfCategoriesInTerminology(context)):
        category = slicer.vtkSlicerTerminologyCategory()
        assert logic.GetNthCategoryInTerminology(context, c, category)
        if category.GetCodeValue() != category_value:
            continue
        for t in range(logic.GetNumberOfTypesInTerminologyCategory(context, category)):
            type_object = slicer.vtkSlicerTerminologyType()
            assert logic.GetNthTypeInTerminologyCategory(context, category, t, type_object)
            if type_object.GetCodeValue() == type_value:
                return category, type_object
    return None, None


def test_slicer_loads_the_context_file_and_finds_the_kidney_with_its_colour():
    slicer = pytest.importorskip("slicer")
    logic = slicer.vtkSlicerTerminologiesModuleLogic()
    assert logic.LoadContextFromFile(str(terminology.CONTEXT_FILE))
    assert logic.IsTerminologyContextLoaded(terminology.TERMINOLOGY_CONTEXT)

    category, kidney = _find_type(logic, terminology.TERMINOLOGY_CONTEXT, "123037004", "64033007")
    assert kidney is not None and kidney.GetCodeMeaning() == "Kidney"
    modifiers = {}
    for n in range(
        logic.GetNumberOfTypeModifiersInTerminologyType(terminology.TERMINOLOGY_CONTEXT, category, kidney)
    ):
        modifier = slicer.vtkSlicerTerminologyType()
        assert logic.GetNthTypeModifierInTerminologyType(
            terminology.TERMINOLOGY_CONTEXT, category, kidney, n, modifier
        )
        modifiers[modifier.GetCodeValue()] = tuple(modifier.GetRecommendedDisplayRGBValue())
    assert modifiers == {
        LEFT.value: terminology.term("kidney_left").colour_255,
        RIGHT.value: terminology.term("kidney_right").colour_255,
    }

    # Slicer finds entries by the structure key too ("3dSlicerLabel").
    entry = slicer.vtkSlicerTerminologyEntry()
    assert logic.FindTypeInTerminologyBy3dSlicerLabel(terminology.TERMINOLOGY_CONTEXT, "ureter_right", entry)
    assert entry.GetTypeObject().GetCodeValue() == "87953007"
    assert entry.GetTypeModifierObject().GetCodeValue() == RIGHT.value

    # Every structure's entry resolves against the loaded context, with its colour.
    for key, t in terminology.STRUCTURES.items():
        entry = slicer.vtkSlicerTerminologyEntry()
        assert logic.DeserializeTerminologyEntry(terminology.terminology_entry(key), entry), key
        assert logic.UpdateEntryFromLoadedTerminologies(entry, [], []), key
        if t.modifier is None:
            colour = entry.GetTypeObject().GetRecommendedDisplayRGBValue()
            assert colour is not None and len(colour) == 3, key
