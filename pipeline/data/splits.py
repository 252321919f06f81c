"""Labels and train/test splits as datasets distribute them, read into one table (schemas.tables.LABELS).

`data.labels` may name:
- a Parquet table with the columns relpath and label (and optionally group and split);
- UCF101's split folder (`ucfTrainTestlist/`): `classInd.txt` ("1 ApplyEyeMakeup") with
  `trainlist0N.txt` ("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1") and `testlist0N.txt`
  ("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi");
- HMDB51's split folder (`testTrainMulti_7030_splits/`): one `<class>_test_splitN.txt` per class and
  split, each line "<video file> <code>", code 1 train, 2 test, 0 in neither.
`split` (1-3) chooses N. The table's columns are schemas.tables.LABELS. Windows line endings, blank
lines and repeated entries are accepted; an entry listed twice with different classes or sides is
refused, naming the file and both lines.

`match_videos` then ties the table's entries to the decoded videos by their relpath under the
videos root, or where that names no video, by the file name alone when exactly one decoded video
has it (HMDB51 lists file names only; a UCF101 root may or may not keep the class folders).
Entries that match no video are reported (how many, and the first few), never fatal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pandas as pd

from pipeline.storage.tables import read_table
from schemas import paths
from schemas.errors import MissingInputError, UserError
from schemas.tables import LABEL_SPLITS, LABELS

COLUMNS = LABELS.names  # relpath, label, group, split

HMDB_FILE = re.compile(r"^(?P<label>.+)_test_split(?P<split>\d)\.txt$")
HMDB_SIDES = {"1": "train", "2": "test", "0": None}
SHOWN = 5  # missing names listed in a report


class SplitError(UserError, ValueError):
    """A split file that cannot be read as its dataset writes it."""


@dataclass
class Entry:
    relpath: str
    label: str
    split: str | None
    where: str  # file:line, for messages


@dataclass
class Matched:
    """The labels of the decoded videos, and what the lists named that is not there."""

    table: pd.DataFrame  # relpath (a decoded video's), label, group (or None), split (or None)
    missing: list[str] = field(default_factory=list)

    def report(self) -> str | None:
        if not self.missing:
            return None
        shown = ", ".join(self.missing[:SHOWN]) + (", ..." if len(self.missing) > SHOWN else "")
        return f"{len(self.missing)} listed videos are not among the decoded videos, skipped: {shown}"


def _lines(path: Path) -> list[tuple[int, str]]:
    """Non-blank lines, whatever the line endings, with their numbers."""
    text = path.read_bytes().decode("utf-8-sig", errors="replace")
    return [(number, line.strip()) for number, line in enumerate(text.splitlines(), 1) if line.strip()]


def _ucf101(folder: Path, split: int) -> list[Entry]:
    classes: dict[str, str] = {}
    for number, line in _lines(folder / "classInd.txt"):
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise SplitError(f"{folder / 'classInd.txt'}:{number}: expected '<index> <class>', got {line!r}")
        classes[parts[0]] = parts[1]
    entries = []
    for side in ("train", "test"):
        path = folder / f"{side}list0{split}.txt"
        if not path.is_file():
            raise SplitError(f"{path}: missing; UCF101's split {split} needs {side}list0{split}.txt beside classInd.txt")
        for number, line in _lines(path):
            parts = line.split()
            relpath = parts[0].replace("\\", "/")
            label = PurePosixPath(relpath).parent.name
            if len(parts) > 1:  # trainlist: "<relpath> <class index>", the index must agree with the folder
                if parts[1] not in classes:
                    raise SplitError(f"{path}:{number}: class index {parts[1]} is not in classInd.txt")
                label = classes[parts[1]]
            if not label:
                raise SplitError(f"{path}:{number}: {relpath!r} names no class folder and no class index")
            entries.append(Entry(relpath, label, side, f"{path.name}:{number}"))
    return entries


def _hmdb51(folder: Path, split: int) -> list[Entry]:
    entries = []
    files = sorted(p for p in folder.iterdir() if (m := HMDB_FILE.match(p.name)) and m["split"] == str(split))
    if not files:
        raise SplitError(f"{folder}: no HMDB51 '<class>_test_split{split}.txt' files")
    for path in files:
        label = HMDB_FILE.match(path.name)["label"]  # type: ignore[index]
        for number, line in _lines(path):
            parts = line.split()
            if len(parts) != 2 or parts[1] not in HMDB_SIDES:
                raise SplitError(f"{path}:{number}: expected '<video> <0|1|2>', got {line!r}")
            side = HMDB_SIDES[parts[1]]
            if side is not None:
                entries.append(Entry(f"{label}/{parts[0]}", label, side, f"{path.name}:{number}"))
    return entries


def dataset_layout(path: Path) -> str:
    """'parquet', 'ucf101' or 'hmdb51': what `data.labels` names."""
    if path.is_dir():
        if (path / "classInd.txt").is_file():
            return "ucf101"
        if any(HMDB_FILE.match(p.name) for p in path.iterdir()):
            return "hmdb51"
        raise SplitError(f"{path}: a folder, but neither UCF101's split lists (classInd.txt) nor HMDB51's (*_test_splitN.txt)")
    if not path.is_file():
        raise MissingInputError(f"{path}: no labels table or split folder")
    return "parquet"


def read_labels(path: str | Path, split: int = 1) -> pd.DataFrame:
    """The labels `path` names as one table: relpath, label, group (None: from the name), split
    ('train', 'test', or None where the table gives none)."""
    path = Path(path)
    kind = dataset_layout(path)
    if kind == "parquet":
        table = read_table(path).to_pandas()
        if not {"relpath", "label"} <= set(table.columns):
            raise SplitError(f"{path}: a labels table needs the columns relpath and label")
        out = table[["relpath", "label"]].copy()
        out["group"] = table["group"] if "group" in table.columns else None
        out["split"] = table["split"] if "split" in table.columns else None
        bad = sorted(set(out.split.dropna()) - set(LABEL_SPLITS))
        if bad:
            raise SplitError(f"{path}: column split holds {bad}; expected train or test")
        out = out.drop_duplicates()
        conflicting = out.relpath[out.relpath.duplicated()].tolist()
        if conflicting:
            raise SplitError(f"{path}: {len(conflicting)} relpaths have two different rows, e.g. {conflicting[0]!r}")
        return out.reset_index(drop=True)
    entries = _ucf101(path, split) if kind == "ucf101" else _hmdb51(path, split)
    seen: dict[str, Entry] = {}
    for entry in entries:
        paths.check_relpath(entry.relpath, f"{path}, {entry.where}")
        paths.check_label(entry.label, f"{path}, {entry.where}")
        first = seen.setdefault(entry.relpath, entry)
        if (first.label, first.split) != (entry.label, entry.split):
            raise SplitError(f"{path}: {entry.relpath} is listed as {first.label}/{first.split} ({first.where}) "
                             f"and as {entry.label}/{entry.split} ({entry.where})")  # fmt: skip
    rows = [{"relpath": e.relpath, "label": e.label, "group": None, "split": e.split} for e in seen.values()]
    return pd.DataFrame(rows, columns=COLUMNS)


def match_videos(labels: pd.DataFrame, relpaths: list[str]) -> Matched:
    """Labels of the decoded videos (`relpaths`): by relpath, else by a file name only one of them has."""
    known = set(relpaths)
    by_name: dict[str, list[str]] = {}
    for relpath in relpaths:
        by_name.setdefault(PurePosixPath(relpath).name, []).append(relpath)
    rows, missing, taken = [], [], set()
    for row in labels.itertuples(index=False):
        relpath = row.relpath if row.relpath in known else None
        if relpath is None and len(by_name.get(PurePosixPath(row.relpath).name, [])) == 1:
            relpath = by_name[PurePosixPath(row.relpath).name][0]
        if relpath is None or relpath in taken:
            missing.append(row.relpath)
            continue
        taken.add(relpath)
        rows.append({"relpath": relpath, "label": row.label, "group": row.group, "split": row.split})
    return Matched(pd.DataFrame(rows, columns=COLUMNS), missing)
