"""Where the videos live: a local folder, or an fsspec URL (s3://bucket/videos, gs://..., memory://...).

Listing a URL root, handing FFmpeg one video of it (a presigned URL where the filesystem can sign
one, else a temporary copy of that one video), and keeping secrets out of messages. Credentials come
only from the environment, profiles or fsspec's configuration; nothing here stores or prints them.
"""

from __future__ import annotations

import hashlib
import math
import re
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Iterator

import fsspec

from pipeline.io.ffmpeg_binary import input_path
from schemas.errors import MissingInputError, UserError
from schemas.paths import is_url

_BLOCK_BYTES = 8 * 2**20  # one read of an object: big enough for few requests, small for memory
_SIGN_MARGIN_S = 300  # a signed URL outlives the decode timeout by this much
_SIGN_MAX_S = 7 * 24 * 3600  # the longest S3 and GCS sign for


class SourceUnavailable(UserError, RuntimeError):
    """A videos root at a URL that cannot be listed: no package for its protocol, or no access."""


def join(root: str | Path, relpath: str) -> str:
    """The location of `relpath` under `root`: the URL joined with "/", or the absolute local path."""
    if is_url(root):
        return f"{str(root).rstrip('/')}/{relpath}"
    return str((Path(root) / relpath).absolute())


@dataclass(frozen=True)
class RemoteFile:
    url: str
    relpath: str  # POSIX, relative to the root, as a local scan of the same tree gives it
    size: int
    version: str  # tells this version of the object from others (`object_version`)


def object_version(info: dict[str, Any]) -> str:
    """What tells one version of an object from another: its ETag where the store gives one (S3, GCS,
    Azure), else a hash of everything fsspec says of it (as fsspec's `ukey`)."""
    etag = info.get("ETag") or info.get("etag")
    return str(etag) if etag else hashlib.sha256(str(info).encode()).hexdigest()


def list_files(root: str, wanted: Callable[[str], bool]) -> list[RemoteFile]:
    """Every object under the URL `root` whose name `wanted` accepts, sorted by relpath, with its
    size and version from the one listing. MissingInputError if the root holds no object at all."""
    try:
        fs, root_path = fsspec.core.url_to_fs(root)
        fs.invalidate_cache(root_path)  # a listing cached by an earlier call in this process may be stale
        if not fs.isdir(root_path):
            raise MissingInputError(f"videos root {redact(root)} is not a folder (no object under it): check data.videos, "
                                    "and the credentials in the environment, profile or fsspec configuration")  # fmt: skip
        listing = fs.find(root_path, detail=True)
    except (ImportError, ValueError, PermissionError) as exc:  # fsspec: "Install s3fs ...", "Protocol not known"; access denied
        raise SourceUnavailable(f"videos root {redact(root)} cannot be listed ({redact(str(exc))}): install the filesystem's "
                                "package (s3fs for s3://, gcsfs for gs://), or check the credentials") from None  # fmt: skip
    prefix = root_path.rstrip("/") + "/"
    found = []
    for name, info in listing.items():
        assert name.startswith(prefix), (name, prefix)
        relpath = name[len(prefix) :]
        if info.get("type") == "file" and wanted(PurePosixPath(relpath).name):
            found.append(RemoteFile(join(root, relpath), relpath, int(info["size"]), object_version(info)))
    return sorted(found, key=lambda f: f.relpath)


@contextmanager
def local_copy(location: str) -> Iterator[tuple[Path, str]]:
    """A temporary local copy of the one object at the URL `location`, read once in blocks, and its
    sha256; deleted on exit."""
    fs, path = fsspec.core.url_to_fs(location)
    digest = hashlib.sha256()
    with tempfile.TemporaryDirectory(prefix="mscl-video-") as folder:
        copy = Path(folder) / ("video" + PurePosixPath(path).suffix)  # the extension helps FFmpeg tell the format
        with fs.open(path, "rb") as source, open(copy, "wb") as target:
            while block := source.read(_BLOCK_BYTES):
                digest.update(block)
                target.write(block)
        yield copy, digest.hexdigest()


@contextmanager
def opened_source(location: str | Path, *, expires_s: float) -> Iterator[str]:
    """The input FFmpeg should read for one video: a local file as `input_path` gives it; an object
    under a URL root as a presigned URL valid for at least `expires_s` where its filesystem can sign
    (S3, GCS), otherwise (memory://, others) as a temporary local copy of that video, deleted on exit.

    The presigned URL holds a signature: show it only through `named` or `redact`."""
    if not is_url(location):
        yield input_path(location)
        return
    fs, path = fsspec.core.url_to_fs(str(location))
    try:
        signed = fs.sign(path, expiration=min(math.ceil(expires_s) + _SIGN_MARGIN_S, _SIGN_MAX_S))
    except (NotImplementedError, AttributeError, ValueError, OSError):  # cannot sign here (gcsfs without a service account): copy
        signed = None
    if signed is not None:
        yield signed
        return
    with local_copy(str(location)) as (copy, _):
        yield input_path(copy)


_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^\s/@'\"<>]+@")
_QUERY = re.compile(r"(?i)\b(https?://[^\s?#'\"<>]*)\?[^\s#'\"<>]*?(?=:?(?:\s|$)|[#'\"<>])")  # FFmpeg writes "<url>: why"
_SIGNED_PARAM = re.compile(r"(?i)\b((?:x-amz|x-goog)-[a-z-]+|awsaccesskeyid|signature|sig)=[^&\s'\"<>]+")


def redact(text: str) -> str:
    """`text` without what may be a secret: the `user:password@` part of URLs, the query of http(s)
    URLs (a presigned URL's X-Amz-Signature, X-Amz-Credential, ...), and such parameters left alone."""
    text = _QUERY.sub(r"\1?<redacted>", text)
    text = _USERINFO.sub(r"\1<redacted>@", text)
    return _SIGNED_PARAM.sub(r"\1=<redacted>", text)


def named(text: str, relpath: str, locations: Iterable[str]) -> str:
    """A message about one video, for failure details and logs: each of its `locations` (its URL or
    path, the signed URL or copy FFmpeg read) replaced by its relpath, longest first, then `redact`ed."""
    for location in sorted({loc for loc in locations if loc}, key=len, reverse=True):
        text = text.replace(location, relpath)
    return redact(text)
