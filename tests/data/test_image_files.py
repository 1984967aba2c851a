"""Image files other machines hand us: 16-bit greyscale scaled to 8 bits, names in another Unicode form found."""

from __future__ import annotations

import unicodedata

import numpy as np
import pytest
from PIL import Image

from phi3v.data.dataset import ConversationDataset, load_eval_examples
from phi3v.data.validation import validate_dataset
from phi3v.errors import UserError
from phi3v.image_files import load_image
from phi3v.image_processing_phi3v import Phi3VImageProcessor
from phi3v.processing_phi3v import Phi3VProcessor
from phi3v.training.demo_tokenizer import build_tiny_tokenizer

from .builders import record, write_lines, write_png

RAMP = (np.arange(32 * 64).reshape(32, 64) * 31).astype(np.uint16)  # 0 .. 63457: the whole 16-bit range


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_a_16_bit_greyscale_image_is_scaled_not_clipped(tmp_path, suffix):
    path = tmp_path / f"scan{suffix}"
    Image.fromarray(RAMP).save(path)
    assert Image.open(path).mode.startswith("I;16")
    pixels = np.asarray(load_image(path))  # (32, 64, 3) uint8
    assert pixels.shape == (32, 64, 3) and pixels.dtype == np.uint8
    expected = np.round(RAMP / 257)  # 65535 -> 255
    assert np.array_equal(pixels[..., 0], expected) and np.array_equal(pixels[..., 2], expected)
    assert (pixels == 255).mean() < 0.01  # PIL's own conversion made 99.6 % of it white


def test_a_16_bit_image_given_as_a_pil_image_is_scaled_too(tmp_path):
    processor = Phi3VImageProcessor(num_crops=1, crop_size=28)
    as_16_bit = processor(Image.fromarray(RAMP), num_crops=1)["pixel_values"]
    as_8_bit = processor(Image.fromarray(np.round(RAMP / 257).astype(np.uint8)), num_crops=1)["pixel_values"]
    assert np.array_equal(as_16_bit.numpy(), as_8_bit.numpy())


@pytest.mark.parametrize("values, mode", [(np.zeros((8, 8), np.int32), "I"), (np.zeros((8, 8), np.float32), "F")])
def test_32_bit_greyscale_is_refused_naming_the_file(tmp_path, values, mode):
    path = tmp_path / "deep.tif"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == mode
    with pytest.raises(UserError, match=rf"^{path} is a 32-bit .* greyscale image \(mode {mode}\), whose range cannot be "
                                        "known: save it as an 8-bit or 16-bit image"):
        load_image(path)


def nfd_dataset(folder):
    """A jsonl naming `café/crème.png` composed (NFC) while the disk holds it decomposed (NFD), as macOS writes."""
    nfc = "caf\u00e9/cr\u00e8me.png"
    nfd = unicodedata.normalize("NFD", nfc)
    assert nfc != nfd
    write_png(folder / "images" / nfd)
    assert not (folder / "images" / nfc).exists()  # the file system keeps the bytes it was given
    write_lines(folder / "tiny_train.jsonl", [record("train-0", [nfc])])
    write_lines(folder / "tiny_val.jsonl", [record("val-0", [nfc])])
    return nfc, nfd


def test_an_image_named_nfc_but_stored_nfd_is_found(tmp_path):
    nfc, nfd = nfd_dataset(tmp_path)
    assert validate_dataset(tmp_path, "tiny") == []
    [example] = load_eval_examples(tmp_path / "tiny_val.jsonl", tmp_path / "images")
    assert example.image_paths == [str(tmp_path / "images" / nfd)]
    processor = Phi3VProcessor(Phi3VImageProcessor(num_crops=1, crop_size=28), build_tiny_tokenizer(["What is shown? A cat."], 300))
    item = ConversationDataset(tmp_path / "tiny_train.jsonl", tmp_path / "images", processor, num_crops=1)[0]
    assert item["num_images"] == 1


def test_an_image_named_nfd_but_stored_nfc_is_found(tmp_path):
    nfc = "caf\u00e9.png"
    write_png(tmp_path / "images" / nfc)
    write_lines(tmp_path / "tiny_train.jsonl", [record("train-0", [unicodedata.normalize("NFD", nfc)])])
    write_lines(tmp_path / "tiny_val.jsonl", [record("val-0", [nfc])])
    assert validate_dataset(tmp_path, "tiny") == []


def test_an_image_missing_in_every_form_is_still_reported(tmp_path):
    nfd_dataset(tmp_path)
    write_lines(tmp_path / "tiny_val.jsonl", [record("val-0", ["caf\u00e9/absent.png"])])
    [problem] = validate_dataset(tmp_path, "tiny")
    assert problem.line == 1 and "does not exist" in problem.problem
