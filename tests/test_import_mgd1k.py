"""dataloaders.importers.mgd1k: names, patient grouping, mirroring, lid selection, masks, grades, warnings."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from dataloaders.dataset import DatasetFolder, read_image
from utils.errors import InputError, run_cli
from dataloaders.importers.mgd1k import (SourceKey, binarise_mask, compact_channels, import_mgd1k, output_name,
                                         parse_grades, parse_source_name)
from utils.import_mgd1k import main, next_commands
from dataloaders.splits import patient_ids

H, W = 32, 64                     # deliberately not square, to catch swapped axes
PATIENTS = (3, 7, 12)
EYES = ("OD", "OS")
LIDS = ("UPPER", "LOWER")
REPO = Path(__file__).resolve().parents[1]
UNLABELLED = ("OS", "UPPER", 7)   # this image has no gland label
STRAY_LABEL = "DMI_OD_UPPER_REFLECTED_IR_99.png"
MISSING_ROW = "DMI_OS_UPPER_REFLECTED_IR_99.png"


def stem(eye: str, lid: str, pid: int) -> str:
    return f"DMI_{eye}_{lid}_REFLECTED_IR_{pid}"


def grade_of(eye: str, lid: str, pid: int) -> int:
    return (pid + EYES.index(eye) + 2 * LIDS.index(lid)) % 4


def fake_image(rng: np.random.Generator) -> np.ndarray:
    """Left-right asymmetric gray content in three equal channels (like the IR JPEGs)."""
    gray = np.tile(np.linspace(20, 200, W, dtype=np.float32), (H, 1))
    gray += rng.normal(0, 15, (H, W))
    gray = np.clip(gray, 0, 255).astype(np.uint8)
    return cv2.merge([gray, gray, gray])


def fake_mask(rng: np.random.Generator) -> np.ndarray:
    """Anti-aliased 8-bit mask with a few slanted lines and the two threshold values planted."""
    mask = np.zeros((H, W), np.uint8)
    for _ in range(3):
        x0, x1 = (int(v) for v in rng.integers(0, W, 2))
        cv2.line(mask, (x0, 2), (x1, H - 3), 255, 2, cv2.LINE_AA)
    mask[0, 1], mask[0, W - 2] = 127, 128
    return mask


def write_jpeg(path: Path, array: np.ndarray) -> None:
    ok, data = cv2.imencode(".jpg", array, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    path.write_bytes(data.tobytes())


def make_tree(root: Path, wrapper: str | None = None) -> dict[tuple[str, str, int], dict]:
    """A tiny MGD-1k-shaped download; returns the written source arrays by (eye, lid, id)."""
    base = root / wrapper if wrapper else root
    folders = {k: base / n for k, n in (("img", "Original Images"), ("gland", "Meibomian Gland Labels"),
                                        ("lid", "Eyelid Lebels"), ("grade", "Graded Meiboscore"))}
    for folder in folders.values():
        folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    truth = {}
    rows = []
    for pid in PATIENTS:
        for eye in EYES:
            for lid in LIDS:
                name = stem(eye, lid, pid)
                ext = {(7, "OD", "UPPER"): ".jpg", (12, "OD", "UPPER"): ".jpeg"}.get((pid, eye, lid), ".JPG")
                image, gland, eyelid = fake_image(rng), fake_mask(rng), fake_mask(rng)
                write_jpeg(folders["img"] / f"{name}{ext}", image)
                if (eye, lid, pid) != UNLABELLED:
                    cv2.imwrite(str(folders["gland"] / f"{name}.png"), gland)
                cv2.imwrite(str(folders["lid"] / f"{name}.png"), eyelid)
                rows.append(f"  {name}.png , {grade_of(eye, lid, pid)} ")
                truth[(eye, lid, pid)] = {"path": folders["img"] / f"{name}{ext}", "gland": gland,
                                          "eyelid": eyelid}
    cv2.imwrite(str(folders["gland"] / STRAY_LABEL), fake_mask(rng))
    rows.append(f"{MISSING_ROW},1")
    text = "\ufeff" + "\r\n".join(rows) + "\r\n\r\n\n"
    (folders["grade"] / "Images with Meiboscore.csv").write_bytes(text.encode("utf-8"))
    return truth


def out_name(eye: str, lid: str, pid: int) -> str:
    return f"mgd{pid:04d}_{eye}-{lid.lower()}"


def expected_names(lids: tuple[str, ...]) -> list[str]:
    return sorted(out_name(e, l, p) for p in PATIENTS for e in EYES for l in lids)


def read_unchanged(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def counted(warnings: list[str], pattern: str) -> int:
    """The leading count of the one warning matching ``pattern``."""
    hits = [w for w in warnings if re.search(pattern, w)]
    assert len(hits) == 1, (pattern, warnings)
    return int(hits[0].split()[0])


@pytest.fixture
def tree(tmp_path):
    return make_tree(tmp_path / "src")


# ----------------------------------------------------------------------------- pure functions

@pytest.mark.parametrize("text, key", [
    ("DMI_OD_UPPER_REFLECTED_IR_12", SourceKey(12, "OD", "upper")),
    ("dmi_os_lower_reflected_ir_007", SourceKey(7, "OS", "lower")),
    (" DMI_OS_UPPER_REFLECTED_IR_3 ", SourceKey(3, "OS", "upper")),
    ("DMI_OU_UPPER_REFLECTED_IR_3", None),
    ("DMI_OD_UPPER_REFLECTED_IR_", None),
    ("DMI_OD_UPPER_REFLECTED_IR_3_copy", None),
    ("Thumbs", None),
])
def test_parse_source_name(text, key):
    assert parse_source_name(text) == key


def test_output_names_group_both_eyes_and_lids_of_a_patient():
    keys = [SourceKey(p, e, l) for p in (5, 1234) for e in ("OD", "OS") for l in ("upper", "lower")]
    names = [output_name(k) for k in keys]
    assert names[0] == "mgd0005_OD-upper" and names[-1] == "mgd1234_OS-lower"
    ids = patient_ids(names)  # make_folds' default rule
    assert {ids[n] for n in names[:4]} == {"mgd0005"} and {ids[n] for n in names[4:]} == {"mgd1234"}


def test_binarise_mask_thresholds_at_127():
    raw = np.array([[0, 1, 126, 127], [128, 200, 254, 255]], np.uint8)
    assert binarise_mask(raw).tolist() == [[0, 0, 0, 0], [255, 255, 255, 255]]
    assert binarise_mask(np.array([[0, 1]], np.uint8)).tolist() == [[0, 255]]  # 0/1 mask
    colour = np.zeros((1, 2, 3), np.uint8)
    colour[0, 1, 2] = 200
    assert binarise_mask(colour).tolist() == [[0, 255]]


def test_compact_channels_only_drops_equal_channels():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert np.array_equal(compact_channels(np.dstack([gray] * 3)), gray)
    colour = np.dstack([gray, gray, gray + 1])
    assert compact_channels(colour) is colour


def test_next_commands_quote_the_folder_and_remake_stale_folds(tmp_path):
    dst = tmp_path / "my data"
    dst.mkdir()
    assert next_commands(dst) == [f"python -m utils.make_folds '{dst}' --labelled-per-patient 1",
                                  f"python -m utils.prealign '{dst}'"]
    (dst / "train_dict1.json").write_text("{}")
    assert next_commands(dst)[0].endswith("--labelled-per-patient 1 --overwrite")


def test_parse_grades_tolerates_header_whitespace_and_reports_bad_rows():
    text = ("name,grade\n DMI_OD_UPPER_REFLECTED_IR_1.PNG ,\t3\n\nDMI_OS_UPPER_REFLECTED_IR_1.png,2.0\n"
            "DMI_OS_LOWER_REFLECTED_IR_1.png,4\nnot_an_image.png,1\nDMI_OD_LOWER_REFLECTED_IR_1.png\n"
            "DMI_OD_UPPER_REFLECTED_IR_1.png,1\nDMI_OS_UPPER_REFLECTED_IR_1.jpg,2\n\n")
    table = parse_grades(text)
    assert table.grades == {SourceKey(1, "OD", "upper"): 3, SourceKey(1, "OS", "upper"): 2}
    assert len(table.bad) == 3 and len(table.conflicts) == 1
    semicolons = parse_grades("DMI_OD_UPPER_REFLECTED_IR_1.png; 3\nDMI_OS_UPPER_REFLECTED_IR_1.png;0\n")
    assert semicolons.grades == {SourceKey(1, "OD", "upper"): 3, SourceKey(1, "OS", "upper"): 0}


# ----------------------------------------------------------------------------- import

def test_default_import_upper_lid_mirrors_left_eyes(tree, tmp_path):
    dst = tmp_path / "dst"
    report = import_mgd1k(tmp_path / "src", dst, progress=False)
    names = expected_names(("UPPER",))
    assert sorted(report.names) == names
    assert (report.labels, report.eyelids, report.grades, report.patients) == (5, 6, 6, 3)
    assert sorted(p.stem for p in (dst / "Image").iterdir()) == names
    for (eye, lid, pid), source in tree.items():
        name = out_name(eye, lid, pid)
        if lid == "LOWER":
            assert not list((dst / "Image").glob(f"{name}.*"))
            continue
        colour = cv2.imread(str(source["path"]), cv2.IMREAD_COLOR)
        if eye == "OD":   # copied byte for byte, masks as drawn
            assert (dst / "Image" / f"{name}.jpg").read_bytes() == source["path"].read_bytes()
            flip = lambda a: a  # noqa: E731
        else:             # mirrored, lossless PNG of the decoded pixels
            written = cv2.imread(str(dst / "Image" / f"{name}.png"), cv2.IMREAD_COLOR)
            assert np.array_equal(written, np.fliplr(colour))
            assert not np.array_equal(written, colour)
            flip = np.fliplr
        eyelid = read_unchanged(dst / "Eyelid" / f"{name}.png")
        assert np.array_equal(eyelid, flip((source["eyelid"] > 127).astype(np.uint8) * 255))
        label_path = dst / "Label" / f"{name}.png"
        if (eye, lid, pid) == UNLABELLED:
            assert not label_path.exists()
            continue
        label = read_unchanged(label_path)
        assert label.dtype == np.uint8 and set(np.unique(label)) <= {0, 255}
        assert np.array_equal(label, flip((source["gland"] > 127).astype(np.uint8) * 255))
        assert label[0, W - 2 if eye == "OD" else 1] == 255 and label[0, 1 if eye == "OD" else W - 2] == 0


def test_grades_csv_and_warning_counts(tree, tmp_path, capsys):
    report = import_mgd1k(tmp_path / "src", tmp_path / "dst", progress=False)
    lines = (tmp_path / "dst" / "grades.csv").read_text().splitlines()
    assert lines[0] == "name,grade"
    expected = sorted(f"{out_name(e, 'UPPER', p)},{grade_of(e, 'UPPER', p)}" for p in PATIENTS for e in EYES)
    assert lines[1:] == expected
    assert counted(report.warnings, r"have no gland label: they are imported as unlabelled") == 1
    assert counted(report.warnings, r"gland label\(s\) have no image: skipped") == 1
    assert counted(report.warnings, r"CSV row\(s\) name no image") == 1
    assert any(MISSING_ROW in w for w in report.warnings) and any(STRAY_LABEL in w for w in report.warnings)
    assert len(report.warnings) == 3, report.warnings
    err = capsys.readouterr().err
    assert all(f"warning: {w}" in err for w in report.warnings)


@pytest.mark.parametrize("lid, lids, labels, n_warnings", [
    ("lower", ("LOWER",), 6, 0),
    ("both", ("UPPER", "LOWER"), 11, 3),
])
def test_lid_selection(tree, tmp_path, lid, lids, labels, n_warnings):
    report = import_mgd1k(tmp_path / "src", tmp_path / "dst", lid=lid, progress=False)
    assert sorted(report.names) == expected_names(lids)
    assert report.labels == labels and report.grades == len(report.names)
    assert len(report.warnings) == n_warnings, report.warnings
    ids = patient_ids(report.names)
    for pid in PATIENTS:
        assert {ids[n] for n in report.names if n.startswith(f"mgd{pid:04d}_")} == {f"mgd{pid:04d}"}
    assert len(set(ids.values())) == len(PATIENTS)


def test_no_mirror_keeps_every_image_and_mask_as_recorded(tree, tmp_path):
    dst = tmp_path / "dst"
    import_mgd1k(tmp_path / "src", dst, mirror=False, progress=False)
    for (eye, lid, pid), source in tree.items():
        if lid != "UPPER":
            continue
        name = out_name(eye, lid, pid)
        assert (dst / "Image" / f"{name}.jpg").read_bytes() == source["path"].read_bytes()
        eyelid = read_unchanged(dst / "Eyelid" / f"{name}.png")
        assert np.array_equal(eyelid, (source["eyelid"] > 127).astype(np.uint8) * 255)
    assert not list((dst / "Image").glob("*.png"))


def test_output_loads_with_dataset_folder(tree, tmp_path):
    dst = tmp_path / "dst"
    report = import_mgd1k(tmp_path / "src", dst, lid="both", progress=False)
    folder = DatasetFolder(dst)
    assert sorted(folder.image_paths) == sorted(report.names)
    assert folder.size == (H, W)
    for (eye, lid, pid), source in tree.items():
        name = out_name(eye, lid, pid)
        expected = read_image(source["path"])
        assert np.array_equal(folder.load_image(name), np.fliplr(expected) if eye == "OS" else expected)
        assert folder.has_label(name) == ((eye, lid, pid) != UNLABELLED)
        if folder.has_label(name):
            written = read_unchanged(dst / "Label" / f"{name}.png")
            assert np.array_equal(folder.load_label(name) * 255, written)


def test_undecodable_files_are_skipped_and_named(tree, tmp_path):
    src = tmp_path / "src"
    (src / "Original Images" / "DMI_OD_UPPER_REFLECTED_IR_5.JPG").write_bytes(b"not a jpeg")
    (src / "Meibomian Gland Labels" / f"{stem('OD', 'UPPER', 3)}.png").write_bytes(b"broken")
    report = import_mgd1k(src, tmp_path / "dst", progress=False)
    assert "mgd0005_OD-upper" not in report.names and len(report.names) == 6
    assert report.labels == 4
    assert not (tmp_path / "dst" / "Label" / "mgd0003_OD-upper.png").exists()
    assert (tmp_path / "dst" / "Image" / "mgd0003_OD-upper.jpg").exists()
    assert counted(report.warnings, r"image file\(s\) cannot be decoded") == 1
    assert any("DMI_OD_UPPER_REFLECTED_IR_5.JPG" in w for w in report.warnings)
    assert counted(report.warnings, r"mask file\(s\) are unusable") == 1
    assert any(f"{stem('OD', 'UPPER', 3)}.png cannot be decoded" in w for w in report.warnings)
    assert counted(report.warnings, r"have no gland label") == 2   # patient 7 OS and patient 5


def test_wrapper_folder_label_extension_and_progress(tmp_path, capsys):
    truth = make_tree(tmp_path / "src", wrapper="MGD-1k")
    gland = tmp_path / "src" / "MGD-1k" / "Meibomian Gland Labels"
    name = stem("OS", "UPPER", 3)
    (gland / f"{name}.png").unlink()
    write_jpeg(gland / f"{name}.JPG", truth[("OS", "UPPER", 3)]["gland"])  # label saved as the image
    report = import_mgd1k(tmp_path / "src", tmp_path / "dst", progress=True)
    assert report.labels == 5
    label = read_unchanged(tmp_path / "dst" / "Label" / "mgd0003_OS-upper.png")
    source = cv2.imread(str(gland / f"{name}.JPG"), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(label, np.fliplr((source > 127).astype(np.uint8) * 255))
    assert "importing MGD-1k" in capsys.readouterr().err


# ----------------------------------------------------------------------------- errors and CLI

def one_line_error(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        run_cli(main, argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    return err


def test_bad_arguments_are_one_line_errors(tree, tmp_path, capsys):
    src, dst = tmp_path / "src", tmp_path / "dst"
    assert "does not exist" in one_line_error([str(tmp_path / "nope"), str(dst)], capsys)
    empty = tmp_path / "empty"
    (empty / "Original Images").mkdir(parents=True)
    assert "holds no images" in one_line_error([str(empty), str(dst)], capsys)
    assert "no 'Original Images' folder" in one_line_error([str(empty / "Original Images"), str(dst)], capsys)
    assert "invalid choice" in one_line_error([str(src), str(dst), "--lid", "middle"], capsys)
    dst.mkdir()
    (dst / "notes.txt").write_text("mine")
    assert "not empty" in one_line_error([str(src), str(dst), "--no-progress"], capsys)
    with pytest.raises(InputError, match="is the source folder"):
        import_mgd1k(src, src, overwrite=True, progress=False)


def test_overwrite_replaces_an_import_but_never_foreign_files(tree, tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    import_mgd1k(src, dst, progress=False)
    import_mgd1k(src, dst, mirror=False, overwrite=True, progress=False)
    written = sorted(p.name for p in (dst / "Image").iterdir())
    assert written == [f"{n}.jpg" for n in expected_names(("UPPER",))]
    (dst / "Image" / "my_scan.png").write_bytes(b"x")
    with pytest.raises(InputError, match="my_scan.png was not written by this importer"):
        import_mgd1k(src, dst, overwrite=True, progress=False)
    assert len(list((dst / "Image").iterdir())) == 7   # nothing was deleted


def test_command_line(tree, tmp_path):
    src, dst = tmp_path / "src", tmp_path / "out dir"
    command = [sys.executable, "-m", "utils.import_mgd1k", str(src), str(dst), "--no-progress"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "warning: 1 image(s) have no gland label" in result.stderr
    assert "warning: 1 gland label(s) have no image" in result.stderr
    assert "warning: 1 CSV row(s) name no image" in result.stderr
    assert "imported 6 images of 3 patients" in result.stdout
    assert "5 gland labels, 6 eyelid masks, 6 grades" in result.stdout
    assert f"python -m utils.make_folds '{dst}' --labelled-per-patient 1" in result.stdout
    assert f"python -m utils.prealign '{dst}'" in result.stdout
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and again.stderr.strip().count("\n") == 0
    assert "--overwrite" in again.stderr
    helped = subprocess.run([sys.executable, "-m", "utils.import_mgd1k", "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    for flag in ("SRC", "DST", "--lid", "--no-mirror", "--overwrite", "--no-progress"):
        assert flag in helped.stdout
