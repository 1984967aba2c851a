"""Shared fixtures: a tiny tokenizer trained here and a processor with small crops."""

import pytest

from phi3v.image_processing_phi3v import Phi3VImageProcessor
from phi3v.processing_phi3v import Phi3VProcessor
from phi3v.training.demo_tokenizer import build_tiny_tokenizer

CORPUS = [
    "What is the date written at the top of the page?",
    "Answer briefly. The total amount is 42 dollars.",
    "Classify the video into one of the following classes: Archery, BabyCrawling, BenchPress.",
    "Is the statement true for the pair of images? yes no",
    "Is this meme hateful? The image shows a dog on a beach.",
] * 4


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tiny_tokenizer(CORPUS, vocab_size=340)


@pytest.fixture
def processor(tiny_tokenizer):
    # 28-px crops: one token per crop side keeps every tensor tiny.
    return Phi3VProcessor(Phi3VImageProcessor(num_crops=4, crop_size=28), tiny_tokenizer)
