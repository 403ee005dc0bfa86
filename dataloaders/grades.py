"""Tables of clinicians' meiboscores: CSV rows ``<image>,<grade 0-3>``.

One reader for every grade table the project meets (the ``grades.csv`` that
``python -m utils.import_mgd1k`` writes or a clinic provides, and MGD-1k's own
``Images with Meiboscore.csv``). The rules, shared by :func:`grade_rows` and
:func:`read_grades`:

* text is UTF-8 (a byte-order mark is dropped), else Latin-1;
* fields are separated by ``,``, or by ``;`` when the text holds no ``,``; they are stripped;
* blank rows are skipped;
* the first non-blank row is a header when its second field is not a number;
* an image file suffix (:data:`dataloaders.dataset.IMAGE_EXTS`) on the name is dropped;
* a grade is ``0``, ``1``, ``2`` or ``3`` (``2.0`` reads as 2).
"""
from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path

from dataloaders.dataset import IMAGE_EXTS
from utils.errors import InputError

GRADES = (0, 1, 2, 3)


@dataclass(frozen=True)
class GradeRow:
    """One data row: ``line`` (1-based), ``name`` without an image suffix, ``grade`` (None when
    missing or not one of :data:`GRADES`), ``grade_text`` (the field as written, None when the
    row has one field) and ``text`` (the row as written, for messages)."""

    line: int
    name: str
    grade: int | None
    grade_text: str | None
    text: str


def decode_text(data: bytes) -> str:
    """CSV bytes -> text: UTF-8 (a BOM is dropped), else Latin-1."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def parse_grade(text: str) -> int | None:
    """``'2'`` or ``'2.0'`` -> 2 when it is one of :data:`GRADES`; anything else -> None."""
    value = _number(text.strip())
    return int(value) if value is not None and value in GRADES else None


def _stem(name: str) -> str:
    return Path(name).stem if Path(name).suffix.lower() in IMAGE_EXTS else name


def grade_rows(text: str) -> list[GradeRow]:
    """The data rows of a grade table's text (module docstring), in file order."""
    delimiter = ";" if ";" in text and "," not in text else ","
    rows: list[GradeRow] = []
    first = True
    for line, cells in enumerate(csv.reader(io.StringIO(text), delimiter=delimiter), start=1):
        cells = [cell.strip() for cell in cells]
        if not any(cells):
            continue
        grade_text = cells[1] if len(cells) >= 2 else None
        if first and grade_text is not None and _number(grade_text) is None:
            first = False
            continue  # a header
        first = False
        rows.append(GradeRow(line, _stem(cells[0]), parse_grade(grade_text) if grade_text is not None else None,
                             grade_text, delimiter.join(cells)))
    return rows


def read_grades(path: str | os.PathLike) -> dict[str, int]:
    """``{image name: grade}`` of a grade table; an unreadable file, a row without a grade or a
    grade outside 0-3 is a one-line InputError naming the file and line."""
    path = Path(path)
    try:
        text = decode_text(path.read_bytes())
    except OSError as exc:
        raise InputError(f"--grades {path}: cannot be read ({exc.strerror or exc})") from None
    grades: dict[str, int] = {}
    for row in grade_rows(text):
        if row.grade_text is None:
            raise InputError(f"{path}, line {row.line}: expected 'name,grade', got {row.text!r}")
        if row.grade is None:
            what = "is not one of 0, 1, 2, 3" if _number(row.grade_text) is not None else "is not a number 0-3"
            raise InputError(f"{path}, line {row.line}: grade {row.grade_text!r} {what}")
        grades[row.name] = row.grade
    if not grades:
        raise InputError(f"--grades {path} holds no 'name,grade' rows")
    return grades
