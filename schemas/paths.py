"""What ids, relative paths and class names read from a table may be: the rules every reader checks.

A video id names a folder in the store and files in output folders, and a relpath is joined onto
the videos root: a table edited by hand, or written by another tool, must not be able to reach
outside either. A class name becomes one line of a list (mmaction2's classes.txt): a line break in
it would shift every class after it. pipeline/storage/tables.py checks every column declared here where a
table is read, and refuses a bad row naming the table, the row and the value.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import PurePosixPath
from typing import Any, Iterable

from schemas.errors import UserError

# pipeline/io/scan.py video_id: a slug of [A-Za-z0-9._-] that starts with a letter or digit, "-", 8 hex.
SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
ID_COLUMNS = ("video_id",)
RELPATH_COLUMNS = ("relpath",)
LABEL_COLUMNS = ("label",)
CHECKED_COLUMNS = (*ID_COLUMNS, *RELPATH_COLUMNS, *LABEL_COLUMNS)


def is_url(location: object) -> bool:
    """Whether a location (videos root, store, table) is an fsspec URL (s3://bucket/..., file:///...)
    rather than a local path: the one test every layer uses."""
    return "://" in str(location)


class UnsafeValueError(UserError, ValueError):
    """An id or path from a table that could reach outside its root."""


def id_problem(value: Any) -> str | None:
    """Why `value` is not a single safe path component, or None if it is."""
    if not isinstance(value, str) or not SAFE_ID.fullmatch(value):
        return "is not a single safe path component (letters, digits, '.', '_', '-'; not starting with '.' or '-')"
    return None


def relpath_problem(value: Any) -> str | None:
    """Why `value` is not a relative POSIX path that stays inside its root, or None if it is."""
    if not isinstance(value, str) or not value or "\x00" in value:
        return "is not a relative POSIX path"
    path = PurePosixPath(value)
    if path.is_absolute():
        return "is absolute: it must be relative to its root"
    if any(part in ("..", ".") for part in value.split("/")) or "" in value.split("/"):
        return "has '..', '.' or empty parts: it must stay inside its root"
    return None


def label_problem(value: Any) -> str | None:
    """Why `value` is not a class name (one line of text), or None if it is."""
    if not isinstance(value, str) or not value.strip():
        return "is not a class name (text, not empty)"
    if any(unicodedata.category(char) in ("Cc", "Zl", "Zp") for char in value):
        return "holds a line break or another control character: a class name is one line of text"
    return None


def check_id(value: Any, where: str) -> str:
    """`value` if it is a safe id, else UnsafeValueError naming `where` (table and row)."""
    if problem := id_problem(value):
        raise refuse(where, "video_id", value, problem)
    return value


def check_relpath(value: Any, where: str) -> str:
    if problem := relpath_problem(value):
        raise refuse(where, "relpath", value, problem)
    return value


def check_label(value: Any, where: str) -> str:
    if problem := label_problem(value):
        raise refuse(where, "label", value, problem)
    return value


def first_problem(column: str, values: Iterable[Any]) -> tuple[Any, str] | None:
    """(value, why) for the first unsafe value of an id, relpath or label `column`, or None."""
    problem_of = id_problem if column in ID_COLUMNS else relpath_problem if column in RELPATH_COLUMNS else label_problem
    for value in values:
        if problem := problem_of(value):
            return value, problem
    return None


def refuse(where: str, column: str, value: Any, problem: str) -> UnsafeValueError:
    return UnsafeValueError(f"{where}: {column} {value!r} {problem}; refused")
