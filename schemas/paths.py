"""What ids and relative paths read from a table may be: the rules every reader checks.

A video id names a folder in the store and files in output folders, and a relpath is joined onto
the videos root: a table edited by hand, or written by another tool, must not be able to reach
outside either. pipeline/tables.py checks every column declared here where a table is read, and
refuses a bad row naming the table, the row and the value.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Any, Iterable

# pipeline/scan.py video_id: a slug of [A-Za-z0-9._-] that starts with a letter or digit, "-", 8 hex.
SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
ID_COLUMNS = ("video_id",)
RELPATH_COLUMNS = ("relpath",)


class UnsafeValueError(ValueError):
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


def check_id(value: Any, where: str) -> str:
    """`value` if it is a safe id, else UnsafeValueError naming `where` (table and row)."""
    if problem := id_problem(value):
        raise refuse(where, "video_id", value, problem)
    return value


def check_relpath(value: Any, where: str) -> str:
    if problem := relpath_problem(value):
        raise refuse(where, "relpath", value, problem)
    return value


def first_problem(column: str, values: Iterable[Any]) -> tuple[Any, str] | None:
    """(value, why) for the first unsafe value of an id or relpath `column`, or None."""
    problem_of = id_problem if column in ID_COLUMNS else relpath_problem
    for value in values:
        if problem := problem_of(value):
            return value, problem
    return None


def refuse(where: str, column: str, value: Any, problem: str) -> UnsafeValueError:
    return UnsafeValueError(f"{where}: {column} {value!r} {problem}; refused")
