"""What ids and relative paths read from a table may be: the rules every reader checks.

A video id names a folder in the store and files in output folders, and a relpath is joined onto
the videos root: a table edited by hand, or written by another tool, must not be able to reach
outside either. `check_column` runs where a table is read (pipeline/tables.py read_table) on every
column declared here, and refuses a bad row with the table, the row and the value.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Any, Iterable, Sequence

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
    problem = id_problem(value)
    if problem:
        raise UnsafeValueError(f"{where}: video_id {value!r} {problem}; refused")
    return value


def check_relpath(value: Any, where: str) -> str:
    problem = relpath_problem(value)
    if problem:
        raise UnsafeValueError(f"{where}: relpath {value!r} {problem}; refused")
    return value


def check_column(table: str, column: str, values: Sequence[Any], unique: Iterable[Any] | None = None) -> None:
    """Refuse the first row of `column` (an id or a relpath column) holding an unsafe value, naming
    the table, the row and the value. `unique`: its distinct values, if known (each checked once);
    `values` is then looked at only to find the row of a bad one."""
    problem_of = id_problem if column in ID_COLUMNS else relpath_problem
    for value in values if unique is None else unique:
        problem = problem_of(value)
        if problem:
            row = list(values).index(value)
            raise UnsafeValueError(f"{table}, row {row}: {column} {value!r} {problem}; refused")
