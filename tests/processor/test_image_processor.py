"""The HD transform: crop counts, token counts, exact pixel values, config files, bad input."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from phi3v.errors import UserError
from phi3v.image_files import load_image
from phi3v.image_processing_phi3v import CLIP_MEAN, CLIP_STD, Phi3VImageProcessor

MEAN = np.array(CLIP_MEAN, dtype=np.float32)[:, None, None]
STD = np.array(CLIP_STD, dtype=np.float32)[:, None, None]

# (width, height): square, wide, tall, tiny, extreme and odd sizes.
SIZES = [
    (1, 1), (2, 1), (1, 2), (10000, 100), (100, 10000), (336, 336), (337, 335), (1700, 2200),
    (2200, 1700), (320, 240), (240, 320), (1000, 10), (10, 1000), (999, 333), (333, 999),
    (64, 48), (500, 499), (17, 1300), (1300, 17), (4000, 3000), (3000, 4000), (700, 56), (56, 700),
]


def random_image(width, height, seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def normalised(pixels_hwc):
    """(H, W, 3) uint8 -> (3, H, W) float32, CLIP-normalised."""
    return (pixels_hwc.transpose(2, 0, 1).astype(np.float32) / 255 - MEAN) / STD


def expected_tokens(hd_height, hd_width, crop_size):
    g = crop_size // 28
    h_c, w_c = hd_height // crop_size, hd_width // crop_size
    return (h_c * w_c + 1) * g * g + 1 + (h_c + 1) * g


def largest_scale(width, height, num_crops):
    """Crops along the long side: the largest s with s * ceil(s / ratio) <= num_crops (exact integers)."""
    long, short = max(width, height), min(width, height)
    return max(s for s in range(1, num_crops + 1) if s * -(-s * short // long) <= num_crops)


def test_square_image_token_counts_at_336():
    processor = Phi3VImageProcessor()
    assert processor.num_image_tokens(336, 336, 16) == 2509
    assert processor.num_image_tokens(500, 500, 4) == 757
    assert processor.num_image_tokens(1000, 1000, 1) == 313
    assert processor.num_img_tokens == 144


@pytest.mark.parametrize("num_crops", [1, 4, 16])
def test_token_counts_match_formula_and_crops(num_crops):
    processor = Phi3VImageProcessor(num_crops=num_crops, crop_size=28)
    for width, height in SIZES:
        out = processor(Image.new("RGB", (width, height), (90, 20, 200)))
        hd_height, hd_width = out["image_sizes"][0].tolist()
        h_c, w_c = hd_height // 28, hd_width // 28
        assert hd_height % 28 == 0 and hd_width % 28 == 0
        assert out["pixel_values"].shape == (h_c * w_c + 1, 3, 28, 28), (width, height)
        assert h_c * w_c <= num_crops
        # the long side gets the most crops the rule allows
        assert max(h_c, w_c) == largest_scale(width, height, num_crops), (width, height)
        assert (h_c >= w_c) == (height > width) or h_c == w_c
        tokens = expected_tokens(hd_height, hd_width, 28)
        assert out["num_img_tokens"] == [tokens]
        assert processor.num_image_tokens(height, width, num_crops) == tokens


@pytest.mark.parametrize("num_crops", [1, 4, 16])
def test_token_counts_at_336_follow_the_hd_size(num_crops):
    processor = Phi3VImageProcessor(num_crops=num_crops)
    for width, height in SIZES:
        hd_height, hd_width = processor.hd_size(height, width)
        assert max(hd_height, hd_width) // 336 == largest_scale(width, height, num_crops)
        assert processor.num_image_tokens(height, width) == expected_tokens(hd_height, hd_width, 336)


def test_extreme_sizes_at_16_crops():
    processor = Phi3VImageProcessor(num_crops=16)
    assert processor.hd_size(100, 10000) == (336, 5376)
    assert processor.hd_size(10000, 100) == (5376, 336)
    assert processor.num_image_tokens(100, 10000) == 17 * 144 + 1 + 2 * 12
    assert processor.hd_size(1, 1) == (1344, 1344)


def test_wide_image_pixels_tiles_and_white_padding():
    # 56x14 at num_crops 2 -> no resize (scale 2, ratio 4), 7 white rows above and below.
    pixels = np.asarray(random_image(56, 14))
    out = Phi3VImageProcessor(num_crops=2, crop_size=28)(Image.fromarray(pixels))
    assert out["image_sizes"].tolist() == [[28, 56]]
    crops = out["pixel_values"].numpy()
    assert crops.shape == (3, 3, 28, 28)

    white = (1 - MEAN) / STD
    canvas = np.broadcast_to(white, (3, 28, 56)).copy()
    canvas[:, 7:21] = normalised(pixels)
    np.testing.assert_allclose(crops[1], canvas[:, :, :28], atol=1e-6)
    np.testing.assert_allclose(crops[2], canvas[:, :, 28:], atol=1e-6)
    np.testing.assert_allclose(crops[1][:, 0, 0], white[:, 0, 0], atol=1e-6)


def test_odd_padding_puts_the_extra_row_below():
    # 56x7: 21 rows of padding, 10 above and 11 below.
    pixels = np.asarray(random_image(56, 7, seed=1))
    crops = Phi3VImageProcessor(num_crops=2, crop_size=28)(Image.fromarray(pixels))["pixel_values"].numpy()
    np.testing.assert_allclose(crops[1][:, 10:17], normalised(pixels)[:, :, :28], atol=1e-6)
    white = ((1 - MEAN) / STD)[:, 0, 0]
    assert np.allclose(crops[1][:, 9, 5], white) and np.allclose(crops[1][:, 17, 5], white)


def test_tall_image_is_padded_left_and_right_and_tiled_top_to_bottom():
    pixels = np.asarray(random_image(14, 56, seed=2))
    out = Phi3VImageProcessor(num_crops=2, crop_size=28)(Image.fromarray(pixels))
    assert out["image_sizes"].tolist() == [[56, 28]]
    crops = out["pixel_values"].numpy()
    white = (1 - MEAN) / STD
    canvas = np.broadcast_to(white, (3, 56, 28)).copy()
    canvas[:, :, 7:21] = normalised(pixels)
    np.testing.assert_allclose(crops[1], canvas[:, :28], atol=1e-6)
    np.testing.assert_allclose(crops[2], canvas[:, 28:], atol=1e-6)


def bicubic_weights(in_size, out_size):
    """(out, in) matrix of bicubic interpolation (a = -0.75, half-pixel centres, edge clamping)."""
    def kernel(x):
        x, a = abs(x), -0.75
        if x <= 1:
            return (a + 2) * x**3 - (a + 3) * x**2 + 1
        if x < 2:
            return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a
        return 0.0

    matrix = np.zeros((out_size, in_size))
    for o in range(out_size):
        source = (o + 0.5) * in_size / out_size - 0.5
        base = math.floor(source)
        for i in range(base - 1, base + 3):
            matrix[o, min(max(i, 0), in_size - 1)] += kernel(source - i)
    return matrix


def test_global_crop_is_bicubic_resize_of_the_normalised_hd_image():
    pixels = np.asarray(random_image(56, 14, seed=3))
    crops = Phi3VImageProcessor(num_crops=2, crop_size=28)(Image.fromarray(pixels))["pixel_values"].numpy()
    hd_image = np.concatenate([crops[1], crops[2]], axis=2).astype(np.float64)  # (3, 28, 56)
    rows, cols = bicubic_weights(28, 28), bicubic_weights(56, 28)
    expected = np.einsum("oh,chw,pw->cop", rows, hd_image, cols)
    np.testing.assert_allclose(crops[0], expected, atol=1e-4)


def test_images_concatenate_in_order_and_resize_is_bilinear():
    processor = Phi3VImageProcessor(num_crops=4, crop_size=28)
    first, second = random_image(40, 30, seed=4), random_image(30, 90, seed=5)
    out = processor([first, second])
    (h1, w1), (h2, w2) = out["image_sizes"].tolist()
    n1 = (h1 // 28) * (w1 // 28) + 1
    assert out["pixel_values"].shape[0] == n1 + (h2 // 28) * (w2 // 28) + 1
    torch.testing.assert_close(out["pixel_values"][:n1], processor(first)["pixel_values"])
    # 40x30 at 4 crops -> 56 wide, int(56 / (4/3)) = 42 rows resized bilinearly, 7 white rows above
    resized = np.asarray(first.resize((56, 42), Image.Resampling.BILINEAR))
    np.testing.assert_allclose(out["pixel_values"][1, :, 7:28].numpy(), normalised(resized)[:, :21, :28], atol=1e-6)


def test_transparency_is_composited_onto_white():
    rgba = Image.new("RGBA", (28, 28), (255, 0, 0, 0))
    crops = Phi3VImageProcessor(num_crops=1, crop_size=28)(rgba)["pixel_values"]
    torch.testing.assert_close(crops[1, :, 3, 3], torch.from_numpy((1 - MEAN) / STD)[:, 0, 0])
    gray = Phi3VImageProcessor(num_crops=1, crop_size=28)(Image.new("L", (28, 28), 0))["pixel_values"]
    torch.testing.assert_close(gray[1, :, 0, 0], torch.from_numpy(-MEAN / STD)[:, 0, 0])


def test_config_round_trip_and_official_file(tmp_path):
    processor = Phi3VImageProcessor(num_crops=16, crop_size=56)
    processor.save_pretrained(tmp_path)
    loaded = Phi3VImageProcessor.from_pretrained(tmp_path)
    assert loaded.to_dict() == processor.to_dict()
    assert loaded.num_img_tokens == 4

    official = {
        "auto_map": {"AutoProcessor": "processing_phi3_v.Phi3VProcessor"},
        "do_convert_rgb": True, "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD),
        "image_processor_type": "Phi3VImageProcessor", "num_crops": 4, "num_img_tokens": 144,
        "processor_class": "Phi3VProcessor",
    }
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(official))
    loaded = Phi3VImageProcessor.from_pretrained(tmp_path)
    assert (loaded.num_crops, loaded.crop_size, loaded.num_img_tokens) == (4, 336, 144)


@pytest.mark.parametrize("num_crops", [0, 17, -1, 2.5, True, "4"])
def test_bad_num_crops(num_crops):
    with pytest.raises(UserError, match="num_crops"):
        Phi3VImageProcessor(num_crops=num_crops)
    with pytest.raises(UserError, match="num_crops"):
        Phi3VImageProcessor().preprocess(Image.new("RGB", (4, 4)), num_crops=num_crops)


def test_bad_config_values(tmp_path):
    with pytest.raises(UserError, match="crop_size"):
        Phi3VImageProcessor(crop_size=30)
    with pytest.raises(UserError, match="num_img_tokens"):
        Phi3VImageProcessor(crop_size=56, num_img_tokens=144)
    with pytest.raises(UserError, match="image_std"):
        Phi3VImageProcessor(image_std=[0.2, 0.0, 0.2])
    with pytest.raises(UserError, match="preprocessor_config.json is missing"):
        Phi3VImageProcessor.from_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text('{"num_crops": 4, "size": 336}')
    with pytest.raises(UserError, match=r"unknown key\(s\) \['size'\]"):
        Phi3VImageProcessor.from_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text('{"num_crops": 40}')
    with pytest.raises(UserError, match="preprocessor_config.json: num_crops = 40"):
        Phi3VImageProcessor.from_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text('{"num_crops": ')
    with pytest.raises(UserError, match="not valid JSON"):
        Phi3VImageProcessor.from_pretrained(tmp_path)


def test_bad_images_name_the_culprit(tmp_path):
    processor = Phi3VImageProcessor(num_crops=1, crop_size=28)
    with pytest.raises(UserError, match=r"image 1 has zero size \(0x5\)"):
        processor(Image.new("RGB", (0, 5)))
    with pytest.raises(UserError, match="image size 0x5"):
        processor.num_image_tokens(5, 0)
    with pytest.raises(UserError, match="not a PIL image"):
        processor([np.zeros((4, 4, 3), dtype=np.uint8)])

    missing = tmp_path / "missing.png"
    with pytest.raises(UserError, match="missing.png does not exist"):
        load_image(missing)

    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"this is not an image")
    with pytest.raises(UserError, match="garbage.jpg cannot be read"):
        load_image(garbage)
    with pytest.raises(UserError, match="garbage.jpg cannot be read"):
        processor(garbage)

    truncated = tmp_path / "truncated.jpg"
    random_image(64, 64).save(tmp_path / "whole.jpg")
    whole = (tmp_path / "whole.jpg").read_bytes()
    truncated.write_bytes(whole[: len(whole) * 2 // 3])
    with pytest.raises(UserError, match="truncated.jpg cannot be read"):
        load_image(truncated)
    # a lazily opened PIL image fails only when decoded: the error still names the file
    with pytest.raises(UserError, match="truncated.jpg"):
        processor(Image.open(truncated))


def test_load_image_returns_rgb(tmp_path):
    Image.new("LA", (5, 3), (10, 0)).save(tmp_path / "gray.png")
    image = load_image(tmp_path / "gray.png")
    assert image.mode == "RGB" and image.size == (5, 3)
    assert image.getpixel((0, 0)) == (255, 255, 255)  # fully transparent -> white
