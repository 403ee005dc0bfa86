"""Calibrating the meiboscore to a clinic's graders: fit, choose by cross-validation, apply.

Devices, eyelid annotations and graders differ, so the grade a clinic's graders give a lid
is not always Arita's grade of the measured dropout. From images graded by the clinic
(per-image measures as ``images.csv`` rows, :mod:`utils.clinical.measures`, and grades
0-3) three candidate mappings from measures to grade are compared:

* ``arita``: Arita's fixed thresholds on dropout (:func:`utils.clinical.dropout.meiboscore`);
  nothing is fitted;
* ``thresholds``: three cut points on dropout (grade = number of cut points at or below
  the dropout), fitted to minimise the squared grade error (exactly, by dynamic
  programming over the images sorted by dropout, :func:`fit_thresholds`);
* ``ordinal``: an ordinal model on :data:`FEATURES` (dropout, gland area ratio, gland
  count, median gland length, share of glands reaching the margin): for each ``k = 0, 1,
  2`` a scikit-learn ``LogisticRegression`` (L2, ``C = 1``) on standardised features
  estimates ``P(grade > k)`` (Frank and Hall's cumulative binary decomposition), and the
  grade is the number of ``k`` with ``P(grade > k) > 1/2`` (the median of the ordinal
  distribution; consistent even where the three estimates cross). Chosen over a
  multinomial logistic regression because the grades are ordered and rare at the ends
  (3 % grade 3 on MGD-1k): a multinomial model learns a weight vector per grade and
  ignores the order, while each cumulative split here uses every lid and respects it.
  scikit-learn has no proportional-odds model; this is the nearest one it offers.

The candidates are cross-validated with folds grouped by patient (scikit-learn's
``StratifiedGroupKFold``: no patient's images in both the fitting and the scored part;
grades stratified): pooled over the folds, accuracy, quadratically weighted kappa
(:func:`utils.clinical.agreement.weighted_kappa`) and the confusion matrix, and the
kappa's mean and standard deviation over folds. The candidate with the highest pooled
kappa (ties: the simpler) is refitted on every graded image and saved as a
:class:`MeiboscoreCalibration` (JSON, :data:`CALIBRATION_VERSION`), with what it was
fitted on and the measure settings it needs (a calibration applies to measures made with
the same settings; :meth:`MeiboscoreCalibration.mismatched_setting`).

Features of an image (:func:`feature_rows`): an image without a finite dropout and gland
area ratio (no eyelid) has no calibrated grade; a missing median length or share reaching
the margin (no glands) counts as 0.
"""
from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.preprocessing import StandardScaler

from dataloaders.grades import GRADES
from utils.clinical.agreement import confusion_matrix, weighted_kappa
from utils.clinical.dropout import meiboscore
from utils.errors import InputError

CALIBRATION_FORMAT = "SS-MGS meiboscore calibration"
CALIBRATION_VERSION = 1
FEATURES = ("dropout", "gland_area_ratio", "gland_count", "median_length", "share_reaching_margin")
MODELS = ("arita", "thresholds", "ordinal")      # simplest first: the order breaks ties
DEFAULT_FOLDS = 5
DEFAULT_SEED = 0
REGULARISATION = 1.0                             # LogisticRegression's C
CALIBRATION_FILE = "meiboscore_calibration.json"


def _value(row: Mapping[str, Any], key: str) -> float:
    value = row.get(key)
    if value is None or value == "":
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def feature_rows(rows: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """``(X, usable)``: float64 ``[n, len(FEATURES)]`` and bool ``[n]`` (finite dropout and
    gland area ratio); median length and share reaching the margin NaN -> 0 (no glands)."""
    x = np.array([[_value(row, key) for key in FEATURES] for row in rows], dtype=np.float64).reshape(-1, len(FEATURES))
    usable = np.isfinite(x[:, 0]) & np.isfinite(x[:, 1])
    x[:, 2:] = np.where(np.isfinite(x[:, 2:]), x[:, 2:], 0.0)
    return x, usable


# ----------------------------------------------------------------------------- thresholds on dropout

def fit_thresholds(values: Sequence[float], grades: Sequence[int]) -> list[float]:
    """Three cut points ``t1 <= t2 <= t3`` on ``values`` minimising ``sum (grade - g(v))^2`` with
    ``g(v) = #{k: t_k <= v}``: exact, by dynamic programming over the distinct values in
    order (equal values get one grade). A cut point lies midway between the largest value
    graded below it and the smallest at or above it; one that no value passes is ``inf``,
    one that every value passes is ``-inf``."""
    values, grades = np.asarray(values, dtype=np.float64), np.asarray(grades, dtype=np.int64)
    if values.size == 0:
        raise ValueError("fitting thresholds needs at least one graded value")
    distinct, group = np.unique(values, return_inverse=True)
    k = len(GRADES)
    counts = np.zeros((distinct.size, k))
    np.add.at(counts, (group, grades), 1.0)
    levels = np.arange(k)
    cost = counts @ ((levels[:, None] - levels[None, :]) ** 2).astype(np.float64)   # [groups, assigned]
    total = np.empty_like(cost)
    choice = np.zeros(cost.shape, dtype=np.int64)
    total[0] = cost[0]
    for j in range(1, distinct.size):
        best = np.minimum.accumulate(total[j - 1])                       # best over assigned <= c
        choice[j] = [int(np.argmin(total[j - 1][:c + 1])) for c in range(k)]
        total[j] = best + cost[j]
    assigned = np.empty(distinct.size, dtype=np.int64)
    assigned[-1] = int(np.argmin(total[-1]))
    for j in range(distinct.size - 1, 0, -1):
        assigned[j - 1] = choice[j][assigned[j]]
    cuts = []
    for level in range(1, k):
        below, above = distinct[assigned < level], distinct[assigned >= level]
        if not above.size:
            cuts.append(math.inf)
        elif not below.size:
            cuts.append(-math.inf)
        else:
            cuts.append(float(0.5 * (below.max() + above.min())))
    return cuts


def apply_thresholds(values: np.ndarray, cuts: Sequence[float]) -> np.ndarray:
    """int64 ``[n]``: the number of cut points at or below each value."""
    return (np.asarray(values, dtype=np.float64)[:, None] >= np.asarray(cuts, dtype=np.float64)[None, :]).sum(axis=1)


# ----------------------------------------------------------------------------- ordinal model

@dataclass
class OrdinalModel:
    """Standardisation (``mean``, ``scale`` per feature) and, per ``k = 0 .. K-2``, either a
    logistic model of ``P(grade > k)`` (``coef[k]``, ``intercept[k]``) or, where the fitted
    images were all on one side of ``k``, the constant probability ``constant[k]``."""

    mean: list[float]
    scale: list[float]
    coef: list[list[float] | None]
    intercept: list[float | None]
    constant: list[float | None]

    def above(self, x: np.ndarray) -> np.ndarray:
        """float64 ``[n, K-1]``: ``P(grade > k)`` for the feature rows ``x [n, F]``."""
        z = (x - np.asarray(self.mean)) / np.asarray(self.scale)
        columns = []
        for coef, intercept, constant in zip(self.coef, self.intercept, self.constant):
            if constant is not None:
                columns.append(np.full(x.shape[0], float(constant)))
            else:
                columns.append(1.0 / (1.0 + np.exp(-(z @ np.asarray(coef) + intercept))))
        return np.stack(columns, axis=1)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """int64 ``[n]``: the number of ``k`` with ``P(grade > k) > 1/2``."""
        return (self.above(x) > 0.5).sum(axis=1)


def fit_ordinal(x: np.ndarray, grades: Sequence[int], regularisation: float = REGULARISATION) -> OrdinalModel:
    """The cumulative logistic model (module docstring) on feature rows ``x [n, F]``."""
    grades = np.asarray(grades, dtype=np.int64)
    scaler = StandardScaler().fit(x)
    scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    z = (x - scaler.mean_) / scale
    coef, intercept, constant = [], [], []
    for k in range(len(GRADES) - 1):
        target = grades > k
        if target.all() or not target.any():
            coef.append(None)
            intercept.append(None)
            constant.append(float(target.all()))
            continue
        model = LogisticRegression(C=regularisation, max_iter=2000).fit(z, target)
        coef.append([float(c) for c in model.coef_[0]])
        intercept.append(float(model.intercept_[0]))
        constant.append(None)
    return OrdinalModel([float(m) for m in scaler.mean_], [float(s) for s in scale], coef, intercept, constant)


# ----------------------------------------------------------------------------- the saved mapping

@dataclass
class MeiboscoreCalibration:
    """A fitted mapping from per-image measures to a grade 0-3 (module docstring).

    ``model``: one of :data:`MODELS`; ``thresholds``: the cut points of ``thresholds``;
    ``ordinal``: the :class:`OrdinalModel` of ``ordinal``; ``settings``: the measure settings
    the features were made with; ``fitted_on``: images, patients, grade counts and sources;
    ``cross_validation``: the candidates' cross-validated agreement."""

    model: str
    thresholds: list[float] | None = None
    ordinal: OrdinalModel | None = None
    features: list[str] = field(default_factory=lambda: list(FEATURES))
    settings: dict[str, Any] = field(default_factory=dict)
    fitted_on: dict[str, Any] = field(default_factory=dict)
    cross_validation: dict[str, Any] = field(default_factory=dict)
    version: int = CALIBRATION_VERSION

    def predict_features(self, x: np.ndarray) -> np.ndarray:
        """int64 ``[n]`` grades of usable feature rows ``x [n, F]`` (:func:`feature_rows`)."""
        if self.model == "arita":
            return np.array([meiboscore(v) for v in x[:, 0]], dtype=np.int64).reshape(-1)
        if self.model == "thresholds":
            return apply_thresholds(x[:, 0], self.thresholds)
        return self.ordinal.predict(x)

    def predict_rows(self, rows: Sequence[Mapping[str, Any]]) -> list[int | None]:
        """The calibrated grade of each ``images.csv`` row; None where it has no eyelid."""
        x, usable = feature_rows(rows)
        grades: list[int | None] = [None] * len(rows)
        if usable.any():
            for i, grade in zip(np.flatnonzero(usable), self.predict_features(x[usable])):
                grades[i] = int(grade)
        return grades

    def mismatched_setting(self, settings: Mapping[str, Any]) -> tuple[str, Any, Any] | None:
        """``(key, value in use, fitted value)`` of the first measure setting that differs from
        the one the calibration was fitted with, or None."""
        for key, value in settings.items():
            if key in self.settings and self.settings[key] != value:
                return key, value, self.settings[key]
        return None

    def to_json(self, path: str | Path) -> None:
        """Write the calibration as JSON (infinite cut points as null with their sign in
        ``threshold_signs``; NaN as null)."""
        data = _json_safe({"format": CALIBRATION_FORMAT, **asdict(self)})
        if self.thresholds is not None:
            data["threshold_signs"] = [0 if math.isfinite(t) else (1 if t > 0 else -1) for t in self.thresholds]
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(data, indent=2) + "\n")

    @classmethod
    def from_json(cls, path: str | Path) -> "MeiboscoreCalibration":
        """Read a calibration written by :meth:`to_json`; ValueError for another file or version."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot be read as a calibration ({exc})") from None
        if not isinstance(data, dict) or data.get("format") != CALIBRATION_FORMAT:
            raise ValueError(f"is not a meiboscore calibration (no \"format\": \"{CALIBRATION_FORMAT}\")")
        if data.get("version") != CALIBRATION_VERSION:
            raise ValueError(f"is calibration version {data.get('version')}; this code reads version "
                             f"{CALIBRATION_VERSION}: fit it again with --calibrate")
        if data.get("model") not in MODELS or data.get("features") != list(FEATURES):
            raise ValueError(f"names model {data.get('model')!r} on features {data.get('features')}; "
                             f"expected one of {MODELS} on {list(FEATURES)}")
        thresholds = data.get("thresholds")
        if thresholds is not None:
            signs = data.get("threshold_signs") or [0] * len(thresholds)
            thresholds = [math.inf * s if t is None else float(t) for t, s in zip(thresholds, signs)]
        ordinal = OrdinalModel(**data["ordinal"]) if data.get("ordinal") else None
        if (data["model"] == "thresholds" and thresholds is None) or (data["model"] == "ordinal" and ordinal is None):
            raise ValueError(f"names model {data['model']!r} but holds no fitted {data['model']}")
        return cls(model=data["model"], thresholds=thresholds, ordinal=ordinal, features=data["features"],
                   settings=data.get("settings", {}), fitted_on=data.get("fitted_on", {}),
                   cross_validation=data.get("cross_validation", {}), version=data["version"])


def _json_safe(value: Any) -> Any:
    """NaN and infinite floats -> None, recursively (strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def fit_model(model: str, x: np.ndarray, grades: np.ndarray) -> MeiboscoreCalibration:
    """One candidate of :data:`MODELS` fitted on usable feature rows ``x`` and their grades."""
    if model == "arita":
        return MeiboscoreCalibration("arita")
    if model == "thresholds":
        return MeiboscoreCalibration("thresholds", thresholds=fit_thresholds(x[:, 0], grades))
    if model == "ordinal":
        return MeiboscoreCalibration("ordinal", ordinal=fit_ordinal(x, grades))
    raise ValueError(f"model must be one of {MODELS}, got {model!r}")


# ----------------------------------------------------------------------------- cross-validation

def agreement_summary(true: Sequence[int], estimated: Sequence[int]) -> dict[str, Any]:
    """``n``, ``accuracy``, ``kappa`` (quadratic; NaN when undefined) and ``confusion`` (``[4, 4]``
    list, rows: the graders' grade, columns: the estimate)."""
    if not len(true):
        return {"n": 0, "accuracy": math.nan, "kappa": math.nan, "confusion": [[0] * len(GRADES) for _ in GRADES]}
    return {"n": len(true), "accuracy": float(np.mean(np.equal(true, estimated))),
            "kappa": weighted_kappa(list(true), list(estimated), GRADES, "quadratic"),
            "confusion": confusion_matrix(list(true), list(estimated), GRADES).tolist()}


def grouped_folds(grades: np.ndarray, groups: Sequence[str], folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(fit, score)`` index pairs of ``min(folds, patients)`` folds grouped by patient and
    stratified by grade (scikit-learn ``StratifiedGroupKFold``, shuffled with ``seed``)."""
    patients = len(set(groups))
    if patients < 2:
        raise ValueError(f"cross-validation needs graded images of at least 2 patients, got {patients}")
    splitter = StratifiedGroupKFold(n_splits=min(folds, patients), shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)        # a grade with fewer images than folds
        return [(fit, score) for fit, score in splitter.split(np.zeros(len(grades)), grades, list(groups))]


def cross_validate(x: np.ndarray, grades: np.ndarray, groups: Sequence[str], folds: int = DEFAULT_FOLDS,
                   seed: int = DEFAULT_SEED) -> dict[str, dict[str, Any]]:
    """Each candidate of :data:`MODELS` scored on held-out patients: per model the pooled
    :func:`agreement_summary` plus ``kappa_fold_mean``, ``kappa_fold_sd`` (over folds with a
    defined kappa) and ``predicted`` (int list, the held-out grade of every image)."""
    splits = grouped_folds(grades, groups, folds, seed)
    results = {}
    for model in MODELS:
        predicted = np.zeros(len(grades), dtype=np.int64)
        fold_kappas = []
        for fit, score in splits:
            predicted[score] = fit_model(model, x[fit], grades[fit]).predict_features(x[score])
            fold_kappas.append(weighted_kappa(list(grades[score]), list(predicted[score]), GRADES))
        finite = [k for k in fold_kappas if math.isfinite(k)]
        results[model] = {**agreement_summary(grades.tolist(), predicted.tolist()),
                          "kappa_fold_mean": float(np.mean(finite)) if finite else math.nan,
                          "kappa_fold_sd": float(np.std(finite, ddof=1)) if len(finite) > 1 else math.nan,
                          "predicted": predicted.tolist()}
    return results


def choose_model(results: Mapping[str, Mapping[str, Any]]) -> str:
    """The candidate with the highest pooled cross-validated kappa (NaN lowest; ties: the
    earlier, simpler one of :data:`MODELS`)."""
    def key(model: str) -> float:
        kappa = results[model]["kappa"]
        return kappa if math.isfinite(kappa) else -math.inf
    return max(MODELS, key=lambda m: (key(m), -MODELS.index(m)))


def calibrate(rows: Sequence[Mapping[str, Any]], grades: Mapping[str, int], patients: Mapping[str, str],
              folds: int = DEFAULT_FOLDS, seed: int = DEFAULT_SEED, settings: Mapping[str, Any] | None = None,
              sources: Mapping[str, Any] | None = None) -> MeiboscoreCalibration:
    """Cross-validate the candidates on the graded rows (``rows`` with a ``name`` in ``grades``
    and a usable eyelid), choose one, refit it on all of them; the result records the
    cross-validation (without per-image predictions), ``fitted_on`` (images, patients, grade
    counts, ``sources``) and ``settings``. ValueError without graded usable rows."""
    graded = [row for row in rows if str(row["name"]) in grades]
    x, usable = feature_rows(graded)
    used = [row for row, ok in zip(graded, usable) if ok]
    if not used:
        raise ValueError("no graded image has the measures a calibration needs (an eyelid mask)")
    x = x[usable]
    names = [str(row["name"]) for row in used]
    y = np.array([grades[name] for name in names], dtype=np.int64)
    groups = [patients[name] for name in names]
    results = cross_validate(x, y, groups, folds, seed)
    chosen = choose_model(results)
    calibration = fit_model(chosen, x, y)
    calibration.settings = dict(settings or {})
    calibration.fitted_on = {"images": len(names), "patients": len(set(groups)),
                             "grades": {str(g): int(np.sum(y == g)) for g in GRADES},
                             "graded_without_eyelid": len(graded) - len(used), **dict(sources or {})}
    calibration.cross_validation = {
        "folds": len(grouped_folds(y, groups, folds, seed)), "grouped_by": "patient", "seed": seed,
        "chosen": chosen, "by": "quadratically weighted kappa, pooled over the held-out folds",
        "models": {m: {k: v for k, v in r.items() if k != "predicted"} for m, r in results.items()}}
    return calibration


# ----------------------------------------------------------------------------- report

CV_COLUMNS = ["model", "chosen", "n_images", "n_patients", "folds", "accuracy", "kappa", "kappa_fold_mean",
              "kappa_fold_sd"] + [f"confusion_{i}_{j}" for i in GRADES for j in GRADES]


def cv_rows(calibration: MeiboscoreCalibration) -> list[dict[str, Any]]:
    """One row per candidate (:data:`CV_COLUMNS`; ``confusion_i_j``: graded ``i``, estimated ``j``)."""
    cv, rows = calibration.cross_validation, []
    for model, result in cv["models"].items():
        cells = {f"confusion_{i}_{j}": result["confusion"][i][j] for i in GRADES for j in GRADES}
        rows.append({"model": model, "chosen": int(model == cv["chosen"]), "n_images": result["n"],
                     "n_patients": calibration.fitted_on.get("patients"), "folds": cv["folds"],
                     **{k: result[k] for k in ("accuracy", "kappa", "kappa_fold_mean", "kappa_fold_sd")}, **cells})
    return rows


def _number(value: Any, digits: int = 3) -> str:
    return "undefined" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def describe(calibration: MeiboscoreCalibration) -> str:
    """The fitted mapping in words."""
    if calibration.model == "arita":
        return "Arita's thresholds on dropout (0.05, 1/3, 2/3), unchanged"
    if calibration.model == "thresholds":
        return "dropout thresholds " + ", ".join(_number(t) for t in calibration.thresholds)
    return "ordinal logistic model on " + ", ".join(calibration.features)


def summary_lines(calibration: MeiboscoreCalibration) -> list[str]:
    """Printable cross-validation results and the chosen mapping."""
    cv, fitted = calibration.cross_validation, calibration.fitted_on
    lines = [f"calibration on {fitted['images']} graded images of {fitted['patients']} patients (grades 0-3: "
             + "/".join(str(fitted["grades"][str(g)]) for g in GRADES)
             + f"), {cv['folds']}-fold cross-validation grouped by patient:"]
    for model, result in cv["models"].items():
        matrix = "; ".join(" ".join(str(c) for c in row) for row in result["confusion"])
        lines.append(f"  {model:10s} accuracy {_number(result['accuracy'])}, quadratic kappa {_number(result['kappa'])} "
                     f"(folds {_number(result['kappa_fold_mean'])} +- {_number(result['kappa_fold_sd'])}); confusion "
                     f"(rows: graded 0-3, columns: estimated 0-3) {matrix}"
                     + ("   <- chosen" if model == cv["chosen"] else ""))
    lines.append(f"chosen: {cv['chosen']} (highest cross-validated kappa), refitted on all graded images: "
                 f"{describe(calibration)}")
    return lines


# ----------------------------------------------------------------------------- applying

CALIBRATED_COLUMN = "calibrated_meiboscore"


def load_calibration(path: str | Path, settings: Mapping[str, Any], flag: str = "--calibration") -> MeiboscoreCalibration:
    """Read ``path`` and check it against the measure ``settings`` in use; a one-line InputError
    naming the file (and the setting, as its flag) when it cannot be used."""
    try:
        calibration = MeiboscoreCalibration.from_json(path)
    except ValueError as exc:
        raise InputError(f"{flag} {path}: {exc}") from None
    mismatch = calibration.mismatched_setting(settings)
    if mismatch is not None:
        key, value, fitted = mismatch
        raise InputError(f"{flag} {path}: it was fitted on measures with --{key.replace('_', '-')} {fitted!r}, "
                         f"these use {value!r}; measure with the same setting or calibrate again")
    return calibration


def add_calibrated(rows: list[dict[str, Any]], calibration: MeiboscoreCalibration | None) -> None:
    """In place: each ``images.csv`` row gains :data:`CALIBRATED_COLUMN` (None without an eyelid);
    nothing without a calibration."""
    if calibration is None:
        return
    for row, grade in zip(rows, calibration.predict_rows(rows)):
        row[CALIBRATED_COLUMN] = grade
