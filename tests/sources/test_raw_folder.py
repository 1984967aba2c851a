"""Reading raw folders: the images of hub rows (stored as they are, or re-encoded; corrupt ones reported)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from phi3v.data.sources import raw_folder


def _encoded(image: Image.Image, image_format: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)
    return buffer.getvalue()


def test_image_file_keeps_png_and_jpeg_bytes_and_reencodes_other_formats():
    pixels = np.random.default_rng(0).integers(0, 255, (9, 11, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    png, jpeg, bmp = _encoded(image, "PNG"), _encoded(image, "JPEG"), _encoded(image, "BMP")
    assert raw_folder.image_file(png) == ("png", png)
    assert raw_folder.image_file(jpeg) == ("jpg", jpeg)
    extension, payload = raw_folder.image_file(bmp)
    assert extension == "png" and np.array_equal(np.asarray(Image.open(io.BytesIO(payload))), pixels)


@pytest.mark.parametrize("data", [b"", b"not an image", None])
def test_undecodable_or_missing_images_are_reported(data, tmp_path):
    png = _encoded(Image.new("RGB", (4, 4)), "PNG")
    with pytest.raises(raw_folder.CorruptImageError):
        if data is None:
            raw_folder.image_bytes({"bytes": None, "path": "nowhere.png"}, tmp_path)
        else:
            raw_folder.image_file(data)
    with pytest.raises(raw_folder.CorruptImageError):
        raw_folder.image_file(png[: len(png) // 2])  # truncated
    (tmp_path / "img.png").write_bytes(png)
    assert raw_folder.image_bytes({"bytes": None, "path": "img.png"}, tmp_path) == png
