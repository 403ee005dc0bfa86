"""dataloaders.splits: patient-disjoint 5-fold splits, Atlas choice, patient ids, errors."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from dataloaders.folds import load_fold
from utils.errors import InputError, run_cli
from dataloaders.splits import DEFAULT_PATIENT_REGEX, check_folds, choose_atlas, make_folds, patient_ids, split_patients
from utils.make_folds import main

H, W = 32, 48
REPO = Path(__file__).resolve().parents[1]


def write_dataset(root: Path, patients: dict[str, int], labels: bool = True, seed: int = 0) -> Path:
    """Tiny dataset: ``patients`` = {id: image count}; images ``<id>_<k>.png`` with 0/255 masks."""
    rng = np.random.default_rng(seed)
    (root / "Image").mkdir(parents=True, exist_ok=True)
    (root / "Label").mkdir(parents=True, exist_ok=True)
    for patient, count in patients.items():
        for k in range(count):
            cv2.imwrite(str(root / "Image" / f"{patient}_{k}.png"), rng.integers(0, 256, (H, W), dtype=np.uint8))
            if labels:
                mask = (rng.random((H, W)) > 0.5).astype(np.uint8) * 255
                cv2.imwrite(str(root / "Label" / f"{patient}_{k}.png"), mask)
    return root


def uniform(n: int, images: int = 4) -> dict[str, int]:
    return {f"P{i:03d}": images for i in range(n)}


def sets(fold: dict, split: str) -> set[str]:
    return {s["patient"] for s in fold[split]}


def images_of(subject: dict) -> list[str]:
    return subject["Atlas"] + subject["OtherImg"]


# ----------------------------------------------------------------------------- splits

def test_folds_are_patient_disjoint_and_tests_partition_patients(tmp_path):
    counts = uniform(20, 3)
    root = write_dataset(tmp_path, counts)
    folds = make_folds(root)
    everyone = set(counts)
    assert len(folds) == 5
    for fold in folds:
        train, val, test = sets(fold, "train"), sets(fold, "val"), sets(fold, "test")
        assert not (train & val) and not (train & test) and not (val & test)
        assert train | val | test == everyone
        # every subject holds exactly its patient's images, every image once
        names = [n for split in ("train", "val", "test") for s in fold[split] for n in images_of(s)]
        assert sorted(names) == sorted(f"{p}_{k}" for p, c in counts.items() for k in range(c))
        for split in ("train", "val", "test"):
            for s in fold[split]:
                assert sorted(images_of(s)) == [f"{s['patient']}_{k}" for k in range(3)]
                assert s["Atlas"] == sorted(s["Atlas"]) and s["OtherImg"] == sorted(s["OtherImg"])
        # val/test subjects list all images as OtherImg
        assert all(s["Atlas"] == [] for split in ("val", "test") for s in fold[split])
    tests = [sets(f, "test") for f in folds]
    assert sum(len(t) for t in tests) == 20 and set().union(*tests) == everyone


def test_written_files_match_return_value_and_load(tmp_path):
    root = write_dataset(tmp_path, uniform(6, 2))
    folds = make_folds(root)
    for k, fold in enumerate(folds, start=1):
        assert json.loads((root / f"train_dict{k}.json").read_text()) == fold
        parsed = load_fold(root, k)
        assert [s.patient for s in parsed.test] == [s["patient"] for s in fold["test"]]
        assert [s.atlas for s in parsed.train] == [s["Atlas"] for s in fold["train"]]


def test_proportions_on_20_patients(tmp_path):
    folds = make_folds(write_dataset(tmp_path, uniform(20)))
    for fold in folds:  # 20 patients: test 4, rest 16 -> val 16/8 = 2, train 14 (7:1:2)
        assert (len(fold["train"]), len(fold["val"]), len(fold["test"])) == (14, 2, 4)


def test_proportions_on_73_patients_like_the_paper():
    splits = split_patients({f"P{i}": [f"P{i}_{k}" for k in range(4)] for i in range(73)}, seed=3407)
    assert sorted(len(s["test"]) for s in splits) == [14, 14, 15, 15, 15]
    for s in splits:
        rest = 73 - len(s["test"])
        assert len(s["val"]) == 7  # round(58/8) = round(59/8) = 7
        assert len(s["train"]) == rest - 7


def test_five_patients_is_the_minimum(tmp_path):
    splits = split_patients({f"P{i}": ["a", "b"] for i in range(5)})
    for s in splits:  # 1 test, val at least 1, train the other 3
        assert (len(s["train"]), len(s["val"]), len(s["test"])) == (3, 1, 1)
    root = write_dataset(tmp_path, uniform(4, 2))
    with pytest.raises(InputError, match=r"found 4 patient.*at least 5"):
        make_folds(root)


def test_same_seed_same_folds_other_seed_different(tmp_path):
    root_a = write_dataset(tmp_path / "a", uniform(20))
    root_b = write_dataset(tmp_path / "b", uniform(20))
    first = make_folds(root_a, seed=5)
    text = [(root_a / f"train_dict{k}.json").read_text() for k in range(1, 6)]
    again = make_folds(root_a, seed=5)  # identical content: no --overwrite needed
    assert again == first
    assert [(root_a / f"train_dict{k}.json").read_text() for k in range(1, 6)] == text
    assert make_folds(root_b, seed=5) == first
    other = make_folds(root_b, seed=6, overwrite=True)
    assert [sets(f, "test") for f in other] != [sets(f, "test") for f in first]


def test_refuses_to_replace_different_folds_without_overwrite(tmp_path):
    root = write_dataset(tmp_path, uniform(10))
    make_folds(root, seed=1)
    before = (root / "train_dict1.json").read_text()
    with pytest.raises(InputError, match=r"train_dict1\.json already exists.*--overwrite"):
        make_folds(root, seed=2)
    assert (root / "train_dict1.json").read_text() == before
    make_folds(root, seed=2, overwrite=True)
    assert (root / "train_dict1.json").read_text() != before


# ----------------------------------------------------------------------------- labelled settings

@pytest.mark.parametrize("n", [1, 2, 3])
def test_labelled_per_patient(tmp_path, n):
    folds = make_folds(write_dataset(tmp_path, uniform(10)), labelled_per_patient=n)
    for fold in folds:
        for s in fold["train"]:
            assert len(s["Atlas"]) == n and len(s["OtherImg"]) == 4 - n


def test_atlas_choices_are_nested_and_seeded():
    labelled = ["P1_0", "P1_1", "P1_2", "P1_3"]
    one, two, three = (choose_atlas("P1", labelled, n, seed=3) for n in (1, 2, 3))
    assert set(one) < set(two) < set(three) <= set(labelled)
    assert choose_atlas("P1", labelled, 2, seed=3) == two
    # over many patients the choice is not always the same image (it is random)
    firsts = {choose_atlas(f"P{i}", [f"P{i}_{k}" for k in range(4)], 1)[0][-1] for i in range(30)}
    assert len(firsts) > 1


def test_labelled_per_patient_keeps_one_image_unlabelled(tmp_path, capsys):
    folds = make_folds(write_dataset(tmp_path, {**uniform(6, 4), "Q": 2}), labelled_per_patient=3)
    for fold in folds:
        for s in fold["train"]:
            expected = 1 if s["patient"] == "Q" else 3
            assert len(s["Atlas"]) == expected and len(s["OtherImg"]) >= 1
    assert "fewer than 3 Atlas" in capsys.readouterr().err


@pytest.mark.parametrize("fraction, expected", [(1.0, 14), (0.5, 7), (0.25, 4), (0.01, 1)])
def test_labelled_patients_fraction(tmp_path, fraction, expected):
    folds = make_folds(write_dataset(tmp_path, uniform(20)), labelled_patients=fraction)
    for fold in folds:  # 14 training patients per fold; round-half-up, at least one
        labelled = [s for s in fold["train"] if s["Atlas"]]
        unlabelled = [s for s in fold["train"] if not s["Atlas"]]
        assert len(labelled) == expected
        assert all(len(s["Atlas"]) == 1 for s in labelled)
        assert all(s["Atlas"] == [] and len(s["OtherImg"]) == 4 for s in unlabelled)


@pytest.mark.parametrize("kwargs", [{"labelled_patients": 0.0}, {"labelled_patients": 1.5},
                                    {"labelled_per_patient": 0}])
def test_bad_labelled_settings(tmp_path, kwargs):
    with pytest.raises(InputError, match="--labelled"):
        make_folds(write_dataset(tmp_path, uniform(5, 2)), **kwargs)


# ----------------------------------------------------------------------------- patient ids

def test_default_regex_uses_everything_before_last_underscore():
    assert DEFAULT_PATIENT_REGEX == r"^(.+)_[^_]+$"
    assert patient_ids(["P007_2", "a_b_3", "x_y"]) == {"P007_2": "P007", "a_b_3": "a_b", "x_y": "x"}


def test_custom_regex(tmp_path):
    root = tmp_path
    (root / "Image").mkdir()
    (root / "Label").mkdir()
    rng = np.random.default_rng(1)
    for p in "ABCDEF":
        for side in ("left", "right"):
            name = f"eye{p}-{side}-2021"
            cv2.imwrite(str(root / "Image" / f"{name}.png"), rng.integers(0, 256, (H, W), dtype=np.uint8))
            cv2.imwrite(str(root / "Label" / f"{name}.png"), np.zeros((H, W), np.uint8))
    folds = make_folds(root, patient_regex=r"^eye([A-Z])-")
    for fold in folds:
        for split in ("train", "val", "test"):
            for s in fold[split]:
                assert sorted(images_of(s)) == [f"eye{s['patient']}-left-2021", f"eye{s['patient']}-right-2021"]
    assert set().union(*(sets(f, "test") for f in folds)) == set("ABCDEF")


def test_regex_errors_name_the_image():
    with pytest.raises(InputError, match=r"image 'nounderscore' .*does not match --patient-regex"):
        patient_ids(["P1_1", "nounderscore"])
    with pytest.raises(InputError, match="no capture group"):
        patient_ids(["P1_1"], regex=r"^P\d")
    with pytest.raises(InputError, match="not a valid regular expression"):
        patient_ids(["P1_1"], regex=r"(")


def test_csv_ids_with_and_without_extension(tmp_path):
    root = write_dataset(tmp_path, {f"img{i}": 1 for i in range(12)})  # names img<i>_0
    rows = ["name,patient"] + [f"img{i}_0{'.png' if i % 2 else ''},person{i // 2}" for i in range(12)]
    csv_path = tmp_path / "patients.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    assert patient_ids([f"img{i}_0" for i in range(12)], csv_path=csv_path) == \
        {f"img{i}_0": f"person{i // 2}" for i in range(12)}
    folds = make_folds(root, patient_csv=csv_path)
    for fold in folds:
        for split in ("train", "val", "test"):
            for s in fold[split]:
                i = int(s["patient"][len("person"):])
                assert sorted(images_of(s)) == [f"img{2 * i}_0", f"img{2 * i + 1}_0"]


def test_csv_errors(tmp_path):
    csv_path = tmp_path / "p.csv"
    csv_path.write_text("name,patient\nA_1,A\n")
    with pytest.raises(InputError, match=r"image 'B_1' .*not listed in .*p\.csv"):
        patient_ids(["A_1", "B_1"], csv_path=csv_path)
    csv_path.write_text("file,id\nA_1,A\n")
    with pytest.raises(InputError, match="header 'name,patient'"):
        patient_ids(["A_1"], csv_path=csv_path)
    csv_path.write_text("name,patient\nA_1,A\nA_1.png,B\n")
    with pytest.raises(InputError, match=r"line 3: 'A_1' is listed again"):
        patient_ids(["A_1"], csv_path=csv_path)
    with pytest.raises(InputError, match="not found"):
        patient_ids(["A_1"], csv_path=tmp_path / "nope.csv")


# ----------------------------------------------------------------------------- single images, labels

def test_single_image_patients_never_train(tmp_path, capsys):
    counts = {**uniform(20), "S1": 1, "S2": 1, "S3": 1}
    folds = make_folds(write_dataset(tmp_path, counts))
    err = capsys.readouterr().err
    assert "single image" in err and all(s in err for s in ("S1", "S2", "S3"))
    singles = {"S1", "S2", "S3"}
    for fold in folds:
        assert not singles & sets(fold, "train")
        assert singles <= sets(fold, "val") | sets(fold, "test")
        assert len(fold["val"]) >= 1 and any(len(images_of(s)) >= 2 for s in fold["val"])
    # each is tested exactly once; they are spread over different folds
    assert sorted(p for f in folds for p in sets(f, "test") & singles) == ["S1", "S2", "S3"]
    assert sum(bool(sets(f, "test") & singles) for f in folds) == 3


def test_too_few_multi_image_patients(tmp_path):
    root = write_dataset(tmp_path, {"A": 2, "B": 1, "C": 1, "D": 1, "E": 1, "F": 1})
    with pytest.raises(InputError, match="too few patients with two or more images"):
        make_folds(root)


def test_patients_with_unlabelled_images_train_in_every_fold(tmp_path, capsys):
    root = write_dataset(tmp_path, {**uniform(6, 3), "U": 3, "V": 1})
    (root / "Label" / "P003_1.png").unlink()
    for k in range(3):
        (root / "Label" / f"U_{k}.png").unlink()
    (root / "Label" / "V_0.png").unlink()
    folds = make_folds(root)
    err = capsys.readouterr().err
    assert "P003" in err and "U" in err and "V" in err
    evaluable = {f"P{i:03d}" for i in range(6)} - {"P003"}
    assert sorted(p for f in folds for p in sets(f, "test")) == sorted(evaluable)
    for k, fold in enumerate(folds, start=1):
        assert {"P003", "U"} <= sets(fold, "train")
        assert "V" not in sets(fold, "train") | sets(fold, "val") | sets(fold, "test")
        for subject in fold["train"]:
            assert "P003_1" not in subject["Atlas"] and not (subject["patient"] == "U" and subject["Atlas"])
        load_fold(root, k)  # val/test labels all present


def test_missing_label_for_val_or_test_in_a_fold_file_names_the_file(tmp_path):
    root = write_dataset(tmp_path, uniform(6, 2))
    make_folds(root)
    fold = json.loads((root / "train_dict1.json").read_text())
    name = fold["test"][0]["OtherImg"][0]
    (root / "Label" / f"{name}.png").unlink()
    with pytest.raises(InputError, match=rf"test image '{name}' has no label .*Label/{name}\.png"):
        load_fold(root, 1)


def test_check_mode_catches_patient_split_across_sets(tmp_path):
    root = write_dataset(tmp_path, uniform(6, 2))
    folds = make_folds(root)
    assert len(check_folds(root, patient_regex=DEFAULT_PATIENT_REGEX)) == 5
    fold = folds[0]
    moved = fold["train"][0]["OtherImg"].pop()  # move one image to the test set, no patient keys
    fold["test"].append({"Atlas": [], "OtherImg": [moved]})
    for s in fold["train"] + fold["val"] + fold["test"]:
        s.pop("patient", None)
    (root / "train_dict1.json").write_text(json.dumps(fold))
    check_folds(root)  # without ids the leak is invisible
    with pytest.raises(InputError, match=r"train_dict1\.json: patient '.*' is in two sets"):
        check_folds(root, patient_regex=DEFAULT_PATIENT_REGEX)


# ----------------------------------------------------------------------------- CLI

def test_cli_writes_folds_and_prints_summary(tmp_path, capsys):
    root = write_dataset(tmp_path, uniform(10))
    main([str(root), "--labelled-per-patient", "2", "--labelled-patients", "0.5", "--seed", "11"])
    out = capsys.readouterr().out
    assert "fold 5:" in out and "train_dict1.json" in out
    for k in range(1, 6):
        fold = load_fold(root, k)
        assert sum(1 for s in fold.train if s.atlas) == 4  # round(0.5 * 7) = 4 (half up)
        assert all(len(s.atlas) in (0, 2) for s in fold.train)
    main([str(root), "--check"])
    assert "valid" in capsys.readouterr().out


def test_cli_help_documents_every_flag():
    result = subprocess.run([sys.executable, "-m", "utils.make_folds", "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for flag in ("DATA_DIR", "--patient-regex", "--patient-csv", "--labelled-per-patient",
                 "--labelled-patients", "--seed", "--resize", "--overwrite", "--check"):
        assert flag in result.stdout


@pytest.mark.parametrize("args, expected", [
    (["--patient-regex", "x", "--patient-csv", "y.csv"], "not allowed with"),
    (["--seed", "abc"], "invalid int value"),
    (["--resize", "0", "10"], "--resize W H must be positive"),
    (["--labelled-patients", "2"], "--labelled-patients must be a fraction"),
])
def test_cli_usage_errors_are_one_line_exit_2(tmp_path, capsys, args, expected):
    root = write_dataset(tmp_path, uniform(5, 2))
    with pytest.raises(SystemExit) as exc:
        run_cli(main, [str(root), *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and expected in err


def test_few_val_patients_warn_and_val_fraction_gives_more(tmp_path, capsys):
    """12 patients (the demo): val 1/8 of 9-10 non-test patients = 1 per fold -> a warning naming
    the --val-fraction that gives 3; with it every fold selects on 3 patients and nothing is said."""
    root = write_dataset(tmp_path, uniform(12, 2))
    folds = make_folds(root)
    assert [len(f["val"]) for f in folds] == [1] * 5
    warning = capsys.readouterr().err
    assert "fold(s) 1, 2, 3, 4, 5 select checkpoints on fewer than 3 val patients" in warning
    assert "--val-fraction 0.28" in warning  # round half up of 9 * 0.28 = 2.52 -> 3
    folds = make_folds(root, val_fraction=0.28, overwrite=True)
    assert [len(f["val"]) for f in folds] == [3] * 5
    assert all(len(f["train"]) + len(f["val"]) + len(f["test"]) == 12 for f in folds)
    assert "val patients" not in capsys.readouterr().err
    assert run_cli_code(["--val-fraction", "1", str(root)]) == 2


def run_cli_code(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, argv)
    return exit_info.value.code
