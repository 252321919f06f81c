"""Writing and reading the pipeline's Parquet tables: schema-checked, atomic, deterministic.

A stage writes its tables as one set (`write_table(..., files=FileSet(out))`, pipeline/storage/durable.py):
all are replaced together or none, also if the run is killed between two of them; `read_table`
first finishes a set a killed run had committed, and each stage sweeps its folder at start.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.storage.durable import FileSet, atomic_write_bytes, recover, sweep  # noqa: F401 (re-exported for the stages)
from schemas import paths
from schemas.errors import MissingInputError


def write_table(
    path: str | Path,
    rows: Iterable[Mapping[str, Any]],
    schema: pa.Schema,
    *,
    metadata: Mapping[str, Any] | None = None,
    files: FileSet | None = None,
) -> pa.Table:
    """Write rows (dicts keyed by the schema's columns) as Parquet, atomically.

    A row with a missing or extra column is an error here, not a surprise for the reader.
    `metadata` (JSON-serialisable) is stored in the file's key-value metadata, under its keys.
    With `files` (a FileSet of `path`'s folder) the table is staged, and appears when the set commits.
    """
    rows = list(rows)
    names = set(schema.names)
    for index, row in enumerate(rows):
        if set(row) != names:
            missing, extra = names - set(row), set(row) - names
            raise ValueError(f"row {index} does not match the table schema: missing {sorted(missing)}, extra {sorted(extra)}")
    table = pa.Table.from_pylist(rows, schema=schema) if rows else schema.empty_table()
    if metadata:
        encoded = {key: json.dumps(value, sort_keys=True) for key, value in metadata.items()}
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **encoded})
    # No statistics timestamps or created_by drift: the same rows give the same bytes.
    def write(tmp: str) -> None:
        pq.write_table(table, tmp, compression="zstd")

    if files is None:
        atomic_write_bytes(path, write)
    elif Path(path).parent.absolute() != files.folder.absolute():
        raise ValueError(f"{path} is not in {files.folder}, the folder of its set")
    else:
        files.stage(Path(path).name, write)
    return table


def read_table(path: str | Path, schema: pa.Schema | None = None) -> pa.Table:
    """Read a table, from a local path or an fsspec URL (s3://...); with `schema`, check it has
    exactly those columns. Its ids, relpaths and class names are checked (`check_paths`)."""
    if "://" in str(path):
        try:
            with fsspec.open(str(path), "rb") as handle:
                table = pq.read_table(handle)
        except FileNotFoundError:
            raise MissingInputError(f"{path} does not exist; run the stage that writes it first") from None
    else:
        path = Path(path)
        recover(path.parent)  # a set of tables committed by a run killed before it was done: finish it
        if not path.exists():
            raise MissingInputError(f"{path} does not exist; run the stage that writes it first")
        table = pq.read_table(path)
    if schema is not None and table.schema.names != schema.names:
        raise ValueError(f"{path}: columns {table.schema.names} differ from the declared {schema.names}; re-run its stage")
    check_paths(str(path), table)
    return table


def check_paths(name: str, table: pa.Table) -> None:
    """Refuse a table whose ids or relpaths could reach outside their roots, or whose class names
    are not one line of text (schemas/paths.py), naming the table, the first bad row and its value."""
    for column in paths.CHECKED_COLUMNS:
        if column in table.column_names:
            values = table.column(column)
            bad = paths.first_problem(column, values.unique().to_pylist())  # a clip index repeats each id
            if bad:
                row = pc.index(values, bad[0]).as_py()
                raise paths.refuse(f"{name}, row {row}", column, *bad)


def table_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON metadata stored by write_table."""
    raw = pq.read_schema(path).metadata or {}
    out = {}
    for key, value in raw.items():
        key_s = key.decode()
        if key_s.startswith("ARROW:") or key_s == "pandas":
            continue
        out[key_s] = json.loads(value)
    return out
