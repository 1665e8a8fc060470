"""Tests of png_writer.py: what it writes is a PNG that Pillow (an independent decoder) reads back pixel for pixel,
in every colour type and bit depth it takes, in one band or many, on one thread or several."""
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

import png_writer


def written(pixels, **options):
    file = io.BytesIO()
    png_writer.write_png(file, pixels, **options)
    return file.getvalue()


def read_back(data):
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return img


def photo_like(shape, dtype=np.uint8, seed=0):
    """Smooth gradients plus noise: what the Up filter is for, with every byte value present."""
    rng = np.random.default_rng(seed)
    top = np.iinfo(dtype).max
    ramp = np.linspace(0, top, shape[0] * shape[1]).reshape(shape[:2] + (1,) * (len(shape) - 2))
    noise = rng.integers(-top // 16, top // 16, size=shape)
    return np.clip(ramp + noise, 0, top).astype(dtype)


@pytest.mark.parametrize("shape, dtype, mode", [
    ((37, 53), np.uint8, "L"), ((37, 53, 1), np.uint8, "L"), ((37, 53, 2), np.uint8, "LA"),
    ((37, 53, 3), np.uint8, "RGB"), ((37, 53, 4), np.uint8, "RGBA"), ((37, 53), np.uint16, "I;16"),
    ((1, 1, 3), np.uint8, "RGB"), ((1, 200, 3), np.uint8, "RGB"), ((200, 1), np.uint16, "I;16")])
@pytest.mark.parametrize("band_bytes, threads", [(1 << 22, 1), (100, 2), (1, 3)])
def test_pillow_reads_back_the_same_pixels(shape, dtype, mode, band_bytes, threads, monkeypatch):
    """Each colour type and bit depth, one band or many (down to a band per row), one thread or several."""
    monkeypatch.setattr(png_writer, "BAND_BYTES", band_bytes)
    pixels = photo_like(shape, dtype)
    img = read_back(written(pixels, threads=threads))
    assert img.mode == mode and img.size == (shape[1], shape[0])
    back = np.asarray(img)
    assert back.dtype == dtype and np.array_equal(back, pixels.reshape(back.shape))


def test_bands_and_threads_change_nothing_but_the_flushes_and_the_level_is_zlibs():
    """The same pixels in many bands give the same decompressed stream as in one (the filter does not depend on the
    bands) and a file about as small; level 9 makes a smaller file than level 1; the embedded profile comes back."""
    pixels = photo_like((300, 200, 3))
    one = written(pixels, threads=1)
    original = png_writer.BAND_BYTES
    try:
        png_writer.BAND_BYTES = 6000  # 10 rows a band: 30 bands
        many = written(pixels, threads=2)
    finally:
        png_writer.BAND_BYTES = original

    def stream(data):  # the decompressed IDAT bytes (zlib checks the Adler-32 trailer)
        idat, position = b"", 8
        while position < len(data):
            length, kind = struct.unpack(">I4s", data[position:position + 8])
            if kind == b"IDAT":
                idat += data[position + 8:position + 8 + length]
            position += 12 + length
        return zlib.decompress(idat)

    assert stream(one) == stream(many)
    filtered = np.frombuffer(stream(one), np.uint8).reshape(300, 1 + 600)
    assert (filtered[:, 0] == png_writer.UP).all()
    assert len(many) < 1.1 * len(one)
    assert len(written(pixels, compress_level=9)) < len(one)
    profile = bytes(range(256)) * 3
    assert read_back(written(pixels, icc_profile=profile)).info["icc_profile"] == profile


def test_other_arrays_are_refused_in_one_line():
    with pytest.raises(ValueError, match="uint8 or uint16"):
        written(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="1 to 4"):
        written(np.zeros((4, 4, 5), np.uint8))
    with pytest.raises(ValueError, match="H, W > 0"):
        written(np.zeros((0, 4, 3), np.uint8))
