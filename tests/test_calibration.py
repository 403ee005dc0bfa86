"""Meiboscore calibration (utils.clinical.calibration), its command line, and the agreement pictures
(utils.clinical.plots)."""
from __future__ import annotations

import ast
import csv
import itertools
import json
import math
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from utils import gland_measures as command
from utils.clinical import calibration as cal
from utils.clinical import plots
from utils.clinical.dropout import meiboscore
from utils.errors import InputError

ROOT = Path(__file__).resolve().parents[1]


def clinic(n_patients: int = 60, cuts=(0.1, 0.25, 0.45), noise: float = 0.0, seed: int = 0):
    """Per-image rows (two images a patient) of a clinic whose graders grade dropout with the
    cut points ``cuts`` (not Arita's), optionally with Gaussian noise on what they see."""
    rng = np.random.default_rng(seed)
    rows, grades, patients = [], {}, {}
    for p in range(n_patients):
        level = rng.uniform(0.0, 0.7)
        for k in range(2):
            value = float(np.clip(level + rng.normal(0, 0.02), 0, 1))
            name = f"P{p:03d}_{k}"
            rows.append({"name": name, "dropout": value, "gland_area_ratio": 0.35 * (1 - value),
                         "gland_count": round(25 * (1 - value)), "median_length": 60 * (1 - 0.5 * value),
                         "share_reaching_margin": 1.0})
            grades[name] = int(np.searchsorted(cuts, value + rng.normal(0, noise), side="right"))
            patients[name] = f"P{p:03d}"
    return rows, grades, patients


# ----------------------------------------------------------------------------- thresholds

def brute_force_cuts(values, grades):
    """The least squared grade error over every monotone assignment (cuts between sorted values)."""
    order = np.argsort(values)
    v, g = np.asarray(values)[order], np.asarray(grades)[order]
    best = math.inf
    for cut in itertools.combinations_with_replacement(range(len(v) + 1), 3):
        assigned = np.searchsorted(np.asarray(cut), np.arange(len(v)), side="right")
        best = min(best, float(((assigned - g) ** 2).sum()))
    return best


@pytest.mark.parametrize("seed", range(6))
def test_fitted_thresholds_are_the_least_squares_optimum(seed):
    rng = np.random.default_rng(seed)
    values = rng.uniform(0, 1, 9)
    grades = np.clip(np.round(values * 3 + rng.normal(0, 0.7, 9)), 0, 3).astype(int)
    cuts = cal.fit_thresholds(values, grades)
    assert list(cuts) == sorted(cuts)
    error = float(((cal.apply_thresholds(values, cuts) - grades) ** 2).sum())
    assert error == pytest.approx(brute_force_cuts(values, grades))


def test_fitted_thresholds_known_answers():
    assert cal.fit_thresholds([0.1, 0.2, 0.3, 0.4], [0, 1, 2, 3]) == pytest.approx([0.15, 0.25, 0.35])
    assert cal.fit_thresholds([0.1, 0.2], [0, 0]) == [math.inf] * 3                 # nobody passes a cut
    assert cal.fit_thresholds([0.1, 0.2], [3, 3]) == [-math.inf] * 3
    assert cal.fit_thresholds([0.5, 0.5, 0.5], [0, 1, 2]) == [-math.inf, math.inf, math.inf]   # ties: one grade
    np.testing.assert_array_equal(cal.apply_thresholds(np.array([0.0, 0.15, 0.25, 0.9]), [0.15, 0.25, 0.35]),
                                  [0, 1, 2, 3])                                       # a value on a cut passes it
    with pytest.raises(ValueError):
        cal.fit_thresholds([], [])


# ----------------------------------------------------------------------------- ordinal model

def test_ordinal_model_follows_the_grades_and_handles_missing_grades():
    rows, grades, _ = clinic(noise=0.0)
    x, usable = cal.feature_rows(rows)
    y = np.array([grades[r["name"]] for r in rows])
    model = cal.fit_ordinal(x, y)
    assert np.mean(model.predict(x) == y) > 0.85
    order = np.argsort(x[:, 0])
    assert np.all(np.diff(model.predict(x[order])) >= -1)            # grades rise with dropout
    above = model.above(x)
    assert above.shape == (len(rows), 3) and np.all((above >= 0) & (above <= 1))
    one_grade = cal.fit_ordinal(x, np.ones(len(y), int))             # every image grade 1
    assert one_grade.constant == [1.0, 0.0, 0.0] and set(one_grade.predict(x)) == {1}


def test_feature_rows_need_an_eyelid_and_count_missing_lengths_as_zero():
    rows = [{"name": "a", "dropout": 0.2, "gland_area_ratio": 0.3, "gland_count": 20, "median_length": 50,
             "share_reaching_margin": 0.9},
            {"name": "b", "dropout": "", "gland_area_ratio": "", "gland_count": 3, "median_length": 10,
             "share_reaching_margin": ""},
            {"name": "c", "dropout": 1.0, "gland_area_ratio": 0.0, "gland_count": 0, "median_length": math.nan,
             "share_reaching_margin": None}]
    x, usable = cal.feature_rows(rows)
    assert usable.tolist() == [True, False, True]
    assert x[2].tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]


# ----------------------------------------------------------------------------- cross-validation and choice

def test_folds_keep_each_patient_on_one_side():
    rows, grades, patients = clinic(n_patients=23)
    names = [r["name"] for r in rows]
    y = np.array([grades[n] for n in names])
    groups = [patients[n] for n in names]
    splits = cal.grouped_folds(y, groups, 5, seed=1)
    assert len(splits) == 5
    scored = np.concatenate([score for _, score in splits])
    assert sorted(scored.tolist()) == list(range(len(names)))          # every image scored once
    for fit, score in splits:
        assert not {groups[i] for i in fit} & {groups[i] for i in score}
    assert len(cal.grouped_folds(y[:6], groups[:6], 5, 0)) == 3        # at most one fold per patient
    with pytest.raises(ValueError, match="2 patients"):
        cal.grouped_folds(y[:2], groups[:2], 5, 0)


def test_calibration_to_a_clinic_grading_by_other_cut_points_beats_arita():
    rows, grades, patients = clinic(cuts=(0.1, 0.25, 0.45), noise=0.02)
    result = cal.calibrate(rows, grades, patients, folds=5, seed=0, settings={"pixel_size": 1.0},
                           sources={"grades_file": "g.csv"})
    models = result.cross_validation["models"]
    assert result.model in ("thresholds", "ordinal") and result.cross_validation["chosen"] == result.model
    assert models[result.model]["kappa"] > models["arita"]["kappa"] + 0.1
    assert models["thresholds"]["accuracy"] > 0.85 and models["thresholds"]["kappa"] > 0.9
    exact_rows, exact_grades, _ = clinic(n_patients=200, cuts=(0.1, 0.25, 0.45))      # graders without noise
    x, _ = cal.feature_rows(exact_rows)
    refit = cal.fit_model("thresholds", x, np.array([exact_grades[r["name"]] for r in exact_rows]))
    assert refit.thresholds == pytest.approx([0.1, 0.25, 0.45], abs=0.01)           # the cut points recovered
    assert result.fitted_on["images"] == 120 and result.fitted_on["patients"] == 60
    assert sum(result.fitted_on["grades"].values()) == 120 and result.fitted_on["grades_file"] == "g.csv"
    confusion = np.array(models["arita"]["confusion"])
    assert confusion.sum() == 120 and models["arita"]["n"] == 120


def test_a_clinic_that_grades_like_arita_keeps_arita():
    rows, grades, patients = clinic(cuts=(0.05, 1 / 3, 2 / 3))
    for row in rows:
        grades[row["name"]] = meiboscore(row["dropout"])
    result = cal.calibrate(rows, grades, patients)
    assert result.model == "arita" and result.cross_validation["models"]["arita"]["accuracy"] == 1.0


def test_choice_prefers_higher_kappa_then_the_simpler_model():
    assert cal.choose_model({"arita": {"kappa": 0.5}, "thresholds": {"kappa": 0.7}, "ordinal": {"kappa": 0.6}}) \
        == "thresholds"
    assert cal.choose_model({"arita": {"kappa": 0.7}, "thresholds": {"kappa": 0.7}, "ordinal": {"kappa": 0.7}}) \
        == "arita"
    assert cal.choose_model({"arita": {"kappa": math.nan}, "thresholds": {"kappa": -0.1},
                             "ordinal": {"kappa": math.nan}}) == "thresholds"


# ----------------------------------------------------------------------------- the saved mapping

@pytest.mark.parametrize("model", cal.MODELS)
def test_json_round_trip_predicts_the_same(tmp_path, model):
    rows, grades, _ = clinic()
    x, _ = cal.feature_rows(rows)
    fitted = cal.fit_model(model, x, np.array([grades[r["name"]] for r in rows]))
    fitted.settings = {"pixel_size": 1.0, "dropout_definition": "span"}
    fitted.cross_validation = {"models": {"arita": {"kappa": math.nan}}}
    fitted.to_json(tmp_path / "c.json")
    data = json.loads((tmp_path / "c.json").read_text())               # strict JSON: no NaN, no Infinity
    assert data["version"] == cal.CALIBRATION_VERSION and data["model"] == model
    assert data["cross_validation"]["models"]["arita"]["kappa"] is None
    back = cal.MeiboscoreCalibration.from_json(tmp_path / "c.json")
    assert back.predict_rows(rows) == fitted.predict_rows(rows)
    assert back.settings == fitted.settings


def test_json_keeps_infinite_cut_points(tmp_path):
    fitted = cal.MeiboscoreCalibration("thresholds", thresholds=[-math.inf, 0.3, math.inf])
    fitted.to_json(tmp_path / "c.json")
    assert cal.MeiboscoreCalibration.from_json(tmp_path / "c.json").thresholds == [-math.inf, 0.3, math.inf]


def test_bad_calibration_files_and_settings_are_one_line_errors(tmp_path):
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(ValueError, match="not a meiboscore calibration"):
        cal.MeiboscoreCalibration.from_json(tmp_path / "x.json")
    cal.MeiboscoreCalibration("arita", settings={"pixel_size": 1.0, "dropout_definition": "span"}).to_json(
        tmp_path / "c.json")
    data = json.loads((tmp_path / "c.json").read_text())
    (tmp_path / "v.json").write_text(json.dumps({**data, "version": 99}))
    with pytest.raises(InputError, match="version 99"):
        cal.load_calibration(tmp_path / "v.json", {})
    with pytest.raises(InputError, match="with --dropout-definition 'span', these use 'area'"):
        cal.load_calibration(tmp_path / "c.json", {"dropout_definition": "area"})
    assert cal.load_calibration(tmp_path / "c.json", {"pixel_size": 1.0}).model == "arita"
    with pytest.raises(InputError, match="cannot be read"):
        cal.load_calibration(tmp_path / "missing.json", {})


def test_add_calibrated_leaves_lids_without_eyelid_blank():
    rows = [{"name": "a", "dropout": 0.5, "gland_area_ratio": 0.2, "gland_count": 10, "median_length": 30,
             "share_reaching_margin": 1.0}, {"name": "b", "dropout": "", "gland_area_ratio": ""}]
    cal.add_calibrated(rows, cal.MeiboscoreCalibration("thresholds", thresholds=[0.1, 0.2, 0.4]))
    assert rows[0][cal.CALIBRATED_COLUMN] == 3 and rows[1][cal.CALIBRATED_COLUMN] is None


# ----------------------------------------------------------------------------- command line

def write_png(path, mask):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), mask.astype(np.uint8) * 255)


def graded_masks(root: Path, patients: int = 8) -> Path:
    """Gland and eyelid masks (tall lids, 13 glands filling the upper half when healthy) with
    a known span dropout, and a grades file of a clinic cutting at 0.15 / 0.4 / 0.7."""
    rng = np.random.default_rng(0)
    lines = ["name,grade"]
    for p in range(patients):
        for k in range(2):
            eyelid = np.zeros((120, 220), bool)
            eyelid[10:110, 10:210] = True
            missing = int(rng.integers(0, 12))
            glands = np.zeros_like(eyelid)
            for g in range(13 - missing):
                glands[10:60, 12 + 15 * g:18 + 15 * g] = True
            name = f"L{p:02d}_{k}"
            write_png(root / "masks" / f"{name}.png", glands)
            write_png(root / "eyelids" / f"{name}.png", eyelid)
            lost = missing / 13
            lines.append(f"{name},{int(np.searchsorted([0.15, 0.4, 0.7], lost, side='right'))}")
    (root / "grades.csv").write_text("\n".join(lines) + "\n")
    return root


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_cli_calibrates_writes_and_applies(tmp_path, capsys):
    root = graded_masks(tmp_path)
    out = tmp_path / "out"
    command.main([str(root / "masks"), "--eyelid-dir", str(root / "eyelids"), "--calibrate",
                  str(root / "grades.csv"), "--output", str(out), "--cv-folds", "4", "--no-progress"])
    printed = capsys.readouterr().out
    assert "4-fold cross-validation grouped by patient" in printed and "chosen:" in printed
    for model in cal.MODELS:
        assert f"  {model}" in printed
    saved = json.loads((out / cal.CALIBRATION_FILE).read_text())
    assert saved["fitted_on"]["images"] == 16 and saved["fitted_on"]["patients"] == 8
    assert saved["settings"]["dropout_definition"] == "span" and saved["settings"]["pixel_size"] == 1.0
    rows = read_csv(out / "calibration_cv.csv")
    assert [r["model"] for r in rows] == list(cal.MODELS) and sum(int(r["chosen"]) for r in rows) == 1
    assert sum(int(rows[0][f"confusion_{i}_{j}"]) for i in range(4) for j in range(4)) == 16
    assert cv2.imread(str(out / "calibration_confusion.png")) is not None
    command.main([str(root / "masks"), "--eyelid-dir", str(root / "eyelids"), "--calibration",
                  str(out / cal.CALIBRATION_FILE), "--output", str(tmp_path / "applied"), "--no-progress"])
    images = read_csv(tmp_path / "applied" / "images.csv")
    assert all(r[cal.CALIBRATED_COLUMN] in "0123" and r[cal.CALIBRATED_COLUMN] for r in images)
    with pytest.raises(InputError, match="dropout-definition"):
        command.main([str(root / "masks"), "--eyelid-dir", str(root / "eyelids"), "--calibration",
                      str(out / cal.CALIBRATION_FILE), "--dropout-definition", "area", "--no-progress"])


def test_cli_calibration_errors(tmp_path):
    root = graded_masks(tmp_path, patients=2)
    masks, eyelids, grades = str(root / "masks"), str(root / "eyelids"), str(root / "grades.csv")
    with pytest.raises(InputError, match="needs --eyelid-dir"):
        command.main([masks, "--calibrate", grades])
    with pytest.raises(InputError, match="pass one of them"):
        command.main([masks, "--eyelid-dir", eyelids, "--calibrate", grades, "--calibration", "c.json"])
    with pytest.raises(InputError, match="for --calibrate only"):
        command.main([masks, "--patient-regex", "(.+)_"])
    (root / "other.csv").write_text("nobody,1\n")
    with pytest.raises(InputError, match="no graded image has a mask"):
        command.main([masks, "--eyelid-dir", eyelids, "--calibrate", str(root / "other.csv"), "--no-progress",
                      "--output", str(tmp_path / "o")])
    with pytest.raises(InputError, match="patient-regex"):
        command.main([masks, "--eyelid-dir", eyelids, "--calibrate", grades, "--patient-regex", "^(Q)",
                      "--no-progress", "--output", str(tmp_path / "o")])


# ----------------------------------------------------------------------------- pictures

def test_limits_of_agreement_by_hand():
    stats = plots.limits_of_agreement([1.0, 2.0, 4.0, math.nan], [0.0, 2.0, 2.0, 1.0])
    assert stats["n"] == 3 and stats["bias"] == pytest.approx(1.0)            # differences 1, 0, 2
    assert stats["sd"] == pytest.approx(1.0)
    assert (stats["lower"], stats["upper"]) == (pytest.approx(-0.96), pytest.approx(2.96))
    assert stats["mean"].tolist() == [0.5, 2.0, 3.0]


def test_pictures_are_written_without_pyplot(tmp_path):
    rng = np.random.default_rng(0)
    true = rng.uniform(0, 1, 30)
    plots.bland_altman_figure({"dropout": (true + rng.normal(0, 0.05, 30), true), "none": ([math.nan], [1.0])},
                              tmp_path / "ba.png", "test")
    plots.confusion_figure([[3, 1, 0, 0], [0, 5, 1, 0], [0, 0, 2, 0], [0, 0, 0, 0]], tmp_path / "cm.png", "t",
                           "rows", "columns")
    eyelid = np.zeros((80, 160), bool)
    eyelid[10:70, 10:150] = True
    glands = np.zeros_like(eyelid)
    glands[10:40, 12:148:10] = True
    plots.dropout_definitions_figure(glands, eyelid, tmp_path / "dd.png", "lid")
    for name in ("ba.png", "cm.png", "dd.png"):
        image = cv2.imread(str(tmp_path / name))
        assert image is not None and image.shape[0] > 150 and image.std() > 10
    assert "matplotlib.pyplot" not in sys.modules


def test_only_the_plots_module_imports_matplotlib():
    importers = []
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in ("tests", "docs") or any(p.startswith(".") for p in rel.parts):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(n.split(".")[0] == "matplotlib" for n in names):
                importers.append(str(rel))
    assert sorted(set(importers)) == ["utils/clinical/plots.py"]
