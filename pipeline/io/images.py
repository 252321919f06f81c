"""Reading a user's image files (an mmaction2/denseflow rawframes tree) defensively, with Pillow.

Every image the pipeline reads from outside its own store goes through `read_image`: the header is
read first and the size checked against a limit before a pixel is decoded (a 1.6 KB JPEG may claim
60000x60000); only JPEG and PNG are opened (no exotic decoders); data that ends early is an error,
not a warning and grey pixels; a path is opened as bytes (a name that is not UTF-8 is read, and shown
escaped). Each problem is an `ImageError` naming the file and the cause, for the caller to record
against its video. Decoded pixels are the same as OpenCV's `imread` (both libjpeg-turbo and zlib).
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipeline.io.scan import shown
from schemas.errors import UserError

FORMATS = ("JPEG", "PNG")
ABSOLUTE_MAX_PIXELS = 1 << 27  # 134 MP (11585 x 11585), whatever the memory budget; below Pillow's own bomb limit
MAX_SIDE = 65_500  # JPEG's own limit


class ImageError(UserError, ValueError):
    """An image file that cannot be used; the message names the file and the cause. `too_large`:
    refused for its size (its header), not for its data."""

    def __init__(self, message: str, *, too_large: bool = False) -> None:
        super().__init__(message)
        self.too_large = too_large


@dataclass(frozen=True)
class Header:
    width: int
    height: int
    mode: str  # Pillow's: "L", "RGB", ...


def header(path: str | Path, max_pixels: int) -> Header:
    """The size of an image from its header, nothing decoded; ImageError if it is not a JPEG or PNG
    or is larger than `max_pixels` (and ABSOLUTE_MAX_PIXELS)."""
    with _open(path) as image:
        return _checked(path, image, max_pixels)


def read_image(path: str | Path, *, grey: bool, max_pixels: int) -> np.ndarray:
    """(H, W, 3) uint8 RGB, or (H, W) uint8 with `grey` (a colour JPEG decoded to its luma, as
    libjpeg does for OpenCV's IMREAD_GRAYSCALE). ImageError for a file that is not a JPEG or PNG,
    too large, or whose data is damaged or ends early."""
    with _open(path) as image:
        _checked(path, image, max_pixels)
        if grey and image.format == "JPEG":
            image.draft("L", image.size)  # libjpeg's own colour conversion, no RGB round trip
        try:
            image.load()
            pixels = np.asarray(image.convert("L" if grey else "RGB"))
        except (OSError, SyntaxError, ValueError) as exc:  # Pillow's errors for damaged or truncated data
            raise ImageError(f"{shown(Path(path).name)}: does not decode as an image ({exc})") from None
    return pixels


def _open(path: str | Path) -> Image.Image:
    try:
        with warnings.catch_warnings():  # its own size warning: the size is checked here, with our limit
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(os.fsencode(path), formats=FORMATS)
    except Image.DecompressionBombError as exc:  # beyond Pillow's own limit, itself beyond ours
        pixels = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(pixels[1]) / 1e6:.1f} MP" if pixels else "more pixels"
        raise ImageError(_too_large(path, size, ABSOLUTE_MAX_PIXELS), too_large=True) from None
    except UnidentifiedImageError:
        raise ImageError(f"{shown(Path(path).name)}: does not decode as an image (not a JPEG or PNG file)") from None
    except OSError as exc:
        if exc.errno is None:  # Pillow's own complaint about the data ("Truncated File Read", ...)
            raise ImageError(f"{shown(Path(path).name)}: does not decode as an image ({exc})") from None
        raise ImageError(f"{shown(Path(path).name)}: cannot be read ({exc.strerror or exc})") from None


def _checked(path: str | Path, image: Image.Image, max_pixels: int) -> Header:
    width, height = image.size
    limit = min(max_pixels, ABSOLUTE_MAX_PIXELS)
    if width > MAX_SIDE or height > MAX_SIDE or width * height > limit:
        raise ImageError(_too_large(path, f"{width}x{height} ({width * height / 1e6:.1f} MP)", limit), too_large=True)
    return Header(width, height, image.mode)


def _too_large(path: str | Path, size: str, limit: int) -> str:
    return f"{shown(Path(path).name)}: its header says {size}, more than the {limit / 1e6:.1f} MP an image may have here"
