"""pipeline/io/images.py: a user's image files are read defensively. Before, `cv2.imread` was used:
a JPEG claiming 60000x60000 raised cv2.error, three 1.6 KB JPEGs claiming 12000x12000 decoded as
grey at 3.4 GB, a JPEG cut to a third decoded with only a warning on stderr, and a folder name that
is not UTF-8 crashed the process (exit 139)."""

import os

import cv2
import numpy as np
import pytest

from pipeline.io import images

LIMIT = 64 * 1024 * 1024


def smooth(height=96, width=128, seed=0):
    image = (np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8)
    return cv2.GaussianBlur(image, (9, 9), 3)


def claiming(data: bytes, width: int, height: int) -> bytes:
    """JPEG bytes whose frame header (SOF0) claims another size; the data stays as it was."""
    patched = bytearray(data)
    sof = patched.find(b"\xff\xc0")
    patched[sof + 5 : sof + 7], patched[sof + 7 : sof + 9] = height.to_bytes(2, "big"), width.to_bytes(2, "big")
    return bytes(patched)


@pytest.fixture
def jpeg(tmp_path):
    path = tmp_path / "img_00001.jpg"
    cv2.imwrite(str(path), smooth(), [cv2.IMWRITE_JPEG_QUALITY, 90])
    return path


def test_pixels_are_opencvs(jpeg, tmp_path):
    rgb = images.read_image(jpeg, grey=False, max_pixels=LIMIT)
    assert np.array_equal(rgb, cv2.cvtColor(cv2.imread(str(jpeg)), cv2.COLOR_BGR2RGB))
    # A colour JPEG read as grey is libjpeg's luma, as IMREAD_GRAYSCALE gives; a grey PNG as it is.
    assert np.array_equal(images.read_image(jpeg, grey=True, max_pixels=LIMIT), cv2.imread(str(jpeg), cv2.IMREAD_GRAYSCALE))
    png = tmp_path / "flow_x_00001.png"
    cv2.imwrite(str(png), smooth()[..., 0])
    assert np.array_equal(images.read_image(png, grey=True, max_pixels=LIMIT), smooth()[..., 0])
    assert images.header(jpeg, LIMIT) == images.Header(128, 96, "RGB")


@pytest.mark.parametrize("width, height, limit", [(60000, 60000, LIMIT), (12000, 12000, LIMIT), (640, 480, 640 * 480 - 1)])
def test_a_header_larger_than_the_limit_is_refused_before_decoding(jpeg, width, height, limit):
    jpeg.write_bytes(claiming(jpeg.read_bytes(), width, height)[:1600])  # 1.6 KB that claim to be huge
    size = f"{width}x{height} " if width * height < 178956970 else "3600.0 MP"  # beyond Pillow's own limit: its count
    with pytest.raises(images.ImageError, match=rf"img_00001.jpg: its header says {size}.*, more than"):
        images.header(jpeg, limit)
    with pytest.raises(images.ImageError, match="its header says"):
        images.read_image(jpeg, grey=True, max_pixels=limit)


def test_the_absolute_cap_holds_whatever_the_budget(jpeg):
    jpeg.write_bytes(claiming(jpeg.read_bytes(), 20000, 20000))
    with pytest.raises(images.ImageError, match="more than the 134.2 MP"):
        images.header(jpeg, 10**12)


def test_truncated_and_foreign_data_are_errors_not_warnings(jpeg, tmp_path):
    data = jpeg.read_bytes()
    jpeg.write_bytes(data[: len(data) // 3])
    with pytest.raises(images.ImageError, match=r"img_00001.jpg: does not decode as an image \(image file is truncated"):
        images.read_image(jpeg, grey=False, max_pixels=LIMIT)
    (tmp_path / "random.jpg").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(images.ImageError, match="not a JPEG or PNG"):
        images.read_image(tmp_path / "random.jpg", grey=False, max_pixels=LIMIT)
    bmp = tmp_path / "img_00002.jpg"  # another format under a JPEG's name: no decoder but JPEG's and PNG's is used
    cv2.imwrite(str(tmp_path / "x.bmp"), smooth())
    os.replace(tmp_path / "x.bmp", bmp)
    with pytest.raises(images.ImageError, match="not a JPEG or PNG"):
        images.read_image(bmp, grey=False, max_pixels=LIMIT)


def test_a_huge_sparse_file_costs_no_memory(tmp_path):
    sparse = tmp_path / "img_00001.jpg"
    with open(sparse, "wb") as handle:
        handle.truncate(3 * 2**30)  # 3 GiB of holes
    with pytest.raises(images.ImageError, match="not a JPEG or PNG"):
        images.read_image(sparse, grey=False, max_pixels=LIMIT)


def test_a_name_that_is_not_utf8_is_read_and_shown_escaped(jpeg, tmp_path):
    folder = os.path.join(os.fsencode(tmp_path), b"caf\xe9")
    os.mkdir(folder)
    os.link(jpeg, os.path.join(folder, b"img_00001.jpg"))
    path = os.fsdecode(os.path.join(folder, b"img_00001.jpg"))  # as os.scandir gives it: surrogate escapes
    assert images.read_image(path, grey=False, max_pixels=LIMIT).shape == (96, 128, 3)
    bad = os.path.join(folder, b"bad\xff.jpg")
    with open(bad, "wb") as handle:
        handle.write(jpeg.read_bytes()[:500])
    with pytest.raises(images.ImageError) as error:
        images.read_image(os.fsdecode(bad), grey=False, max_pixels=LIMIT)
    assert str(error.value).startswith("bad\\xff.jpg: does not decode as an image")
    str(error.value).encode("utf-8")  # printable, and storable in a table
