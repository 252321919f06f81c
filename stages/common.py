"""What every stage shares: the failure-record policy, provenance metadata, and the run summary."""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from pydantic import BaseModel

from pipeline.storage import durable, faults
from pipeline.storage.ownership import VIDEOS_ROOT
from schemas import store as store_layout
from schemas import tables
from schemas.params import DecodeParams
from schemas.paths import is_url

log = logging.getLogger("stages")
PROJECT = Path(__file__).resolve().parent.parent  # this checkout: never a store, nor inside one


def failure(stage: str, video_id: str, relpath: str, reason: str, detail: str) -> dict[str, str]:
    """One row of a failures table. Policy: a video a stage cannot use is recorded with a reason,
    logged (`log_failure`, in the main process), counted in the summary, and the stage goes on."""
    if reason not in tables.FAILURE_REASONS:
        raise ValueError(f"unknown failure reason {reason!r}")
    return {"stage": stage, "video_id": video_id, "relpath": relpath, "reason": reason, "detail": detail}


def log_failure(row: dict[str, str]) -> None:
    log.warning("%s failed for %s: %s (%s)", row["stage"], row["relpath"], row["detail"], row["reason"])


def fingerprint(*parts: Any) -> str:
    """A short, stable hash of JSON-able parts (params models included)."""
    plain = [p.model_dump(mode="json") if isinstance(p, BaseModel) else p for p in parts]
    return hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()[:16]


def frames_fingerprint(sha256: str, params: DecodeParams, store_version: int) -> str:
    """What a frames array's pixels depend on: the source's content and the decode params (not paths,
    not versions). The flow stage computes it too, for the lossless frames it decodes itself."""
    return fingerprint(sha256, params.pixel_params(), store_version)


@dataclass
class Summary:
    """Counts a stage reports at the end, for people."""

    stage: str
    started: float = field(default_factory=time.monotonic)
    began: float = field(default_factory=time.time)  # wall clock, for the run record
    counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n

    def text(self) -> str:
        seconds = time.monotonic() - self.started
        parts = [f"{key} {value:,}" for key, value in self.counts.items()]
        lines = [f"{self.stage}: " + ", ".join(parts) + f" in {seconds:.1f} s"]
        lines += [f"  {note}" for note in self.notes]
        return "\n".join(lines)


def record_run(summary: Summary, runs: str | Path) -> None:
    """Write `<runs>/<stage>.json`: when the stage last ran, how long it took, its counts (the report
    page shows them). Not a DVC output, so a re-run never invalidates anything downstream.
    `MSCL_RUNS` in the environment puts them elsewhere (the tests keep them out of the checkout)."""
    runs = os.environ.get("MSCL_RUNS") or runs
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", summary.stage).strip("_") or "stage"
    record = {"stage": summary.stage, "started": datetime.datetime.fromtimestamp(summary.began, datetime.timezone.utc).isoformat(timespec="seconds"),
              "seconds": round(time.monotonic() - summary.started, 2), "counts": summary.counts}  # fmt: skip
    try:
        durable.atomic_write_bytes(Path(runs) / f"{name}.json", lambda tmp: Path(tmp).write_text(json.dumps(record, indent=1)))
    except OSError as exc:  # a record for people: never worth failing the stage over
        log.warning("could not record the run in %s: %s", runs, exc)


def decoded(video_id: str, relpath: str, *, num_frames: int, height: int, width: int, fps: Fraction, source_frame_step: float,
            scale: float) -> dict[str, Any]:  # fmt: skip
    """A row of decoded.parquet (schemas.tables.DECODED), as decode and import-rawframes write it."""
    return {"video_id": video_id, "relpath": relpath, "array": f"{store_layout.FRAMES_GROUP}/{video_id}", "num_frames": num_frames,
            "height": height, "width": width, "fps_num": fps.numerator, "fps_den": fps.denominator,
            "source_frame_step": source_frame_step, "scale": scale}  # fmt: skip


def flow_listing(flowed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The flow arrays of these rows of the flow stage's videos.parquet, as the store listing DVC
    tracks (schemas.tables.STORE_ARRAYS)."""
    return sorted(({"array": r["array"], "fingerprint": r["fingerprint"], "num_frames": r["num_pairs"]} for r in flowed),
                  key=lambda r: r["array"])  # fmt: skip


def repair_command(group: str, imported: bool = False) -> str:
    """The command that rewrites a damaged array of `group`: its stage, reading every chunk of the
    arrays it skips (--verify); for an imported array, the import again."""
    if imported:
        return "python cli.py import-rawframes <its rawframes folder> --verify"
    if group == store_layout.FRAMES_GROUP:
        return "python cli.py decode --verify"
    return f"python cli.py extract-flow --method {group.removeprefix(store_layout.FLOW_GROUP + '/')} --verify"


faults.repair_hint = repair_command  # every message about damaged data, wherever a stage or the CLI shows it


def protected_folders(videos_root: str | Path | None) -> dict[str, Path | str]:
    """The folders a store must never be or hold (pipeline/storage/ownership.py), by what they are."""
    folders = {"the project's folder": PROJECT, "the current folder": Path.cwd()}
    if videos_root is not None:
        folders[VIDEOS_ROOT] = videos_root if is_url(videos_root) else Path(videos_root)
    return folders


def listed_arrays(*tables: str | Path) -> set[str]:
    """The arrays ("frames/<id>", "flow/<method>/<id>") that these stage tables (decoded.parquet,
    the flow stage's videos.parquet) list, for those that exist and read: what the project's own
    tables say a store written before its marker holds."""
    listed: set[str] = set()
    for table in tables:
        try:
            listed.update(pq.read_table(table, columns=["array"]).column("array").to_pylist())
        except (OSError, ValueError, KeyError):  # absent, unreadable or another table: it vouches for nothing
            continue
    return listed
