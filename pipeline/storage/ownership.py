"""The store owns only what it wrote: where a store may be, its identity, and the arrays it wrote.

A stage that writes the store (decode, extract-flow, import-rawframes) enters `owning` first:

1. `check_location`: the store is not the file system's root, nor one of the folders it is given to
   protect (the project's folder, the current folder, the videos root) or a folder holding one.
   Nothing is written anywhere before this passes.
2. `examine`: a folder that exists must be this pipeline's store: its root group's attributes carry
   the marker written when the store was created (`schemas.store.STORE_MARKER`: layout version and a
   random id). A folder without it is refused, naming the path and the fix, unless it is a store
   written before the marker existed: only this pipeline's entries (`frames/`, `flow/`, `zarr.json`)
   and arrays that the project's own tables (or the groups' listings) name. That store is adopted.
3. The store's lock is taken (pipeline/storage/locks.py), and only then is the marker written.

A store at a URL (s3://bucket/store.zarr) is checked the same way, without a file system: it must
not be a bucket's root nor be or hold the videos root; an existing prefix must carry the marker (a
store on object storage is never adopted without one); the lock is a lease object beside it.

Each group lists the arrays this store wrote in it (`schemas.store.OWNED_ATTR`, a group attribute,
so it travels with the group and DVC sees it as part of the output). Every array a run may publish
is listed before its work starts, so a killed run's arrays are listed too. Removing a stale array
(a video no longer wanted) is limited to the listed ones: any other array is reported, never deleted.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Mapping

from pipeline.storage import durable, locks
from pipeline.storage import store as stores
from schemas import store as layout
from schemas.errors import UserError

# What this pipeline itself puts at a store's root (and temporary files of those).
OWN_ENTRIES = frozenset({"zarr.json", layout.FRAMES_GROUP, layout.FLOW_GROUP, layout.LEGACY_PARTIAL_DIR})
FIX = "point data.store (or --store) at a new folder, or at a store this pipeline made"
VIDEOS_ROOT = "the videos root"


class StoreRefused(UserError, ValueError):
    """A store path a stage will not write: the message names it, why, and the fix."""


def check_location(store: str | Path, protected: Mapping[str, str | Path]) -> Path | str:
    """The store's absolute path (or its URL), or StoreRefused if it is the file system's root (a
    bucket's root), or a `protected` folder ({what it is: path or URL}) or one holding it. Reads
    nothing but paths; writes nothing."""
    if stores.is_url(store):
        return _check_url(stores.location(store), protected)
    path = Path(store).absolute()
    real = Path(os.path.realpath(path))
    if real == real.parent:
        raise StoreRefused(f"{store}: is the file system's root; {FIX}")
    for what, folder in protected.items():
        if stores.is_url(folder):
            continue  # videos in a bucket: no local store can hold them
        folder = Path(os.path.realpath(Path(folder).absolute()))
        if real == folder:
            raise StoreRefused(f"{store}: is {what}; {FIX}")
        if real in folder.parents:
            raise StoreRefused(f"{store}: holds {what} ({folder}); {FIX}")
    return path


def _check_url(url: str, protected: Mapping[str, str | Path]) -> str:
    scheme, _, rest = url.partition("://")
    if "/" not in rest.strip("/"):
        raise StoreRefused(f"{url}: is a bucket's root; give the store a prefix of its own (s3://bucket/store.zarr); {FIX}")
    for what, where in protected.items():
        if not stores.is_url(where):
            continue
        other = stores.location(where)
        if url == other:
            raise StoreRefused(f"{url}: is {what}; {FIX}")
        if other.startswith(url + "/"):
            raise StoreRefused(f"{url}: holds {what} ({other}); {FIX}")
    return url


def marker(store: str | Path) -> dict | None:
    """The store's identity from its root group's attributes, or None."""
    value = _attributes(_node(store, "zarr.json")).get(layout.STORE_MARKER)
    return value if isinstance(value, dict) and "id" in value else None


def examine(store: str | Path, listed: Iterable[str] = ()) -> str:
    """What the folder `store` is: "new" (absent or empty), "ours" (it carries the marker) or
    "legacy" (a store from before the marker, to adopt); StoreRefused otherwise, naming what makes it
    not this pipeline's. `listed`: arrays ("frames/<id>", "flow/<method>/<id>") the project's own
    tables name. Writes nothing."""
    if stores.is_url(store):
        return _examine_url(stores.location(store))
    path = Path(store)
    if not path.exists() and not path.is_symlink():
        return "new"
    if not path.is_dir():
        raise StoreRefused(f"{store}: exists and is not a folder; {FIX}")
    if _carries_marker(store):
        return "ours"
    entries = sorted(name for name in os.listdir(path) if not _temporary(name))
    if not entries:
        return "new"
    foreign = [name for name in entries if name not in OWN_ENTRIES]
    if foreign:
        raise StoreRefused(f"{store}: is not this pipeline's store (no {layout.STORE_MARKER} marker, and it holds {_some(foreign)}, "
                           f"which the pipeline does not write); nothing was written to it; {FIX}")  # fmt: skip
    arrays = set(_arrays(path))
    if not any(_is_group(path / name) for name in entries if name != "zarr.json") and not _is_group(path):
        raise StoreRefused(f"{store}: is not a Zarr store (no group metadata) and has no {layout.STORE_MARKER} marker; "
                           f"nothing was written to it; {FIX}")  # fmt: skip
    vouched = set(listed) | {f"{group}/{name}" for group, names in _group_listings(path).items() for name in names}
    if arrays and not arrays & vouched:
        raise StoreRefused(f"{store}: holds arrays that no table of this project lists ({_some(sorted(arrays))}), and no "
                           f"{layout.STORE_MARKER} marker: not this project's store (or one from before stores carried a marker, "
                           f"whose tables are gone: then delete it and run again); nothing was written to it; {FIX}")  # fmt: skip
    return "legacy"


def _carries_marker(store: str | Path) -> bool:
    """Whether the store carries this pipeline's marker; StoreRefused for a layout newer than this pipeline's."""
    found = marker(store)
    if found is None:
        return False
    if not isinstance(found.get("layout"), int) or found["layout"] > layout.STORE_VERSION:
        raise StoreRefused(f"{store}: a store of layout {found.get('layout')!r}, newer than this pipeline's "
                           f"({layout.STORE_VERSION}); update the project, or {FIX}")  # fmt: skip
    return True


def _examine_url(url: str) -> str:
    """examine() for a store at a URL: "new" where nothing is under its prefix, "ours" with the marker."""
    if _carries_marker(url):
        return "ours"
    fs, path = stores.filesystem(url)
    try:
        entries = [name for name in fs.ls(path, detail=False) if not name.rstrip("/").rpartition("/")[2].startswith(".")]
    except FileNotFoundError:
        entries = []
    if not entries:
        return "new"
    shown = [name.rstrip("/").rpartition("/")[2] for name in entries]
    raise StoreRefused(f"{url}: is not this pipeline's store (no {layout.STORE_MARKER} marker, and it holds {_some(sorted(shown))}); "
                       f"nothing was written to it; {FIX}")  # fmt: skip


@dataclass
class Owner:
    """A store this run may write, with the arrays it owns per group."""

    store: Path | str  # a local folder, or a URL
    listed: frozenset[str] = frozenset()  # arrays the project's tables name, for groups with no listing yet
    notes: list[str] = field(default_factory=list)  # for the stage's summary
    lease: str | None = None  # the run's lease on a store at a URL, for every publish (pipeline/storage/locks.py)

    def prepare_group(self, group: str, wanted: set[str]) -> int:
        """Before a stage writes `group`: create it, drop leftovers of killed runs, list `wanted`
        as this store's (before any is written), and remove the store's own arrays of videos no
        longer wanted. An unwanted array the store did not write is left in place and noted.
        Returns how many arrays were removed."""
        stores.ensure_group(self.store, group)
        stores.clear_partial(self.store, group)
        present = set(stores.finished_arrays(self.store, group))
        owned = _group_listings(self.store, group).get(group)
        if owned is None:  # a group written before listings: what the project's tables name
            owned = {name.rpartition("/")[2] for name in self.listed if name.rpartition("/")[0] == group}
        stale = present - wanted
        removed, foreign = sorted(stale & owned), sorted(stale - owned)
        for name in removed:
            stores.remove_array(self.store, group, name)
        # Written before any work starts: a run killed later has listed every array it publishes.
        _write_listing(self.store, group, ((owned & present) - set(removed)) | wanted)
        if foreign:
            self.notes.append(f"left in place, not written by this store: {_some([f'{group}/{name}' for name in foreign])}; "
                              f"delete them yourself if they are not needed")  # fmt: skip
        return len(removed)


@contextlib.contextmanager
def owning(store: str | Path, stage: str, *, protected: Mapping[str, str | Path], listed: Iterable[str] = ()) -> Iterator[Owner]:
    """Hold `store` for `stage` as its writer: check where it is and what it is (nothing is written
    to a refused path, not even a lock beside it), take its lock, then create the store or adopt a
    store from before the marker. Raises StoreRefused or locks.LockedError."""
    path = check_location(store, protected)
    listed = frozenset(listed)
    examine(path, listed)
    with locks.hold(path, stage) as lease:
        state = examine(path, listed)  # again, under the lock: another run may have made it meanwhile
        if state != "ours":
            _write_marker(path)
        owner = Owner(path, listed, lease=lease)
        if state == "legacy":
            owner.notes.append(f"adopted {store}, a store written before stores carried a marker (its tables list its arrays)")
        yield owner


def _write_marker(store: Path | str) -> None:
    """Make `store` (absent, empty, or a store from before the marker) this pipeline's: the root
    group's metadata with the marker, written atomically, keeping any attributes it had."""
    if not stores.is_url(store):
        Path(store).mkdir(parents=True, exist_ok=True)
    meta = _read_json(_node(store, "zarr.json"))
    if meta is None or meta.get("node_type") != "group":
        meta = {"zarr_format": 3, "node_type": "group"}
    meta["attributes"] = _attributes(_node(store, "zarr.json"))
    meta["attributes"][layout.STORE_MARKER] = {
        "layout": layout.STORE_VERSION, "id": uuid.uuid4().hex,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }  # fmt: skip
    _write_json(_node(store, "zarr.json"), meta)


def _write_listing(store: Path | str, group: str, names: Iterable[str]) -> None:
    """Set the group's listing of the arrays this store wrote (its metadata rewritten atomically,
    only when the listing changes)."""
    path = _node(store, f"{group}/zarr.json")
    meta = _read_json(path)
    if meta is None:
        raise StoreRefused(f"{path}: the group's metadata does not read; {FIX}")
    attributes = meta["attributes"] = _attributes(path)
    if attributes.get(layout.OWNED_ATTR) == sorted(names):
        return
    attributes[layout.OWNED_ATTR] = sorted(names)
    _write_json(path, meta)


def _node(store: Path | str, key: str) -> Path | str:
    """The object `key` ("zarr.json", "frames/zarr.json") of a store: a path, or a URL."""
    return f"{stores.location(store)}/{key}" if stores.is_url(store) else Path(store) / key


def _write_json(where: Path | str, value: dict) -> None:
    """Replace a metadata file atomically (an object store's PUT is atomic by itself)."""
    body = json.dumps(value, indent=2)
    if isinstance(where, str):
        fs, path = stores.filesystem(where)
        fs.pipe_file(path, body.encode())
        return
    durable.atomic_write_bytes(where, lambda tmp: Path(tmp).write_text(body))


def _group_listings(store: Path | str, only: str | None = None) -> dict[str, set[str]]:
    """{group: names} of the groups (frames, flow/<method>) that list the arrays the store wrote."""
    # Every group is looked for only in a local store (examine's adoption of a store from before the
    # marker); at a URL a stage asks for its own group.
    groups = [only] if only else [layout.FRAMES_GROUP, *(f"{layout.FLOW_GROUP}/{p.name}" for p in _subfolders(Path(store) / layout.FLOW_GROUP))]
    out = {}
    for group in groups:
        names = _attributes(_node(store, f"{group}/zarr.json")).get(layout.OWNED_ATTR)
        if isinstance(names, list):
            out[group] = {name for name in names if isinstance(name, str)}
    return out


def _arrays(store: Path) -> Iterator[str]:
    """"group/name" of every finished array in the store's groups."""
    yield from (f"{layout.FRAMES_GROUP}/{name}" for name in stores.finished_arrays(store, layout.FRAMES_GROUP))
    for method in _subfolders(store / layout.FLOW_GROUP):
        group = f"{layout.FLOW_GROUP}/{method.name}"
        yield from (f"{group}/{name}" for name in stores.finished_arrays(store, group))


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def _is_group(folder: Path) -> bool:
    return ((_read_json(folder / "zarr.json") or {}).get("node_type")) == "group"


def _some(names: list[str]) -> str:
    """The first few of `names` for a message, and how many there are."""
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    return f"{len(names)}: {shown}" if len(names) > 1 else shown


def _attributes(path: Path | str) -> dict:
    """The attributes of the zarr metadata at `path`; {} where it does not read or has none."""
    attributes = (_read_json(path) or {}).get("attributes")
    return attributes if isinstance(attributes, dict) else {}


def _read_json(path: Path | str) -> dict | None:
    try:
        if isinstance(path, str):
            fs, key = stores.filesystem(path)
            value = json.loads(fs.cat_file(key))
        else:
            value = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _temporary(name: str) -> bool:
    """What an interrupted write of this pipeline's (or zarr's) may leave at a store's root."""
    return (name.startswith(".") and name.endswith(durable.TMP_SUFFIX)) or (name.startswith("zarr.") and name.endswith(".partial"))
