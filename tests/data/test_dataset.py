from __future__ import annotations

import pytest
import torch

from phi3v.data.collate import collate_packed, collate_padded
from phi3v.data.dataset import ConversationDataset, load_eval_examples, majority_answer, with_image_tags
from phi3v.data.records import Turn
from phi3v.errors import UserError
from phi3v.image_processing_phi3v import Phi3VImageProcessor
from phi3v.processing_phi3v import Phi3VProcessor
from phi3v.training.demo_tokenizer import build_tiny_tokenizer

from .builders import record, write_lines, write_png


def test_tags_single_image():
    assert with_image_tags([Turn(["a.png"], "What?", "x")]) == [{"user": "<|image_1|>\nWhat?", "assistant": "x"}]


def test_tags_multi_image_from_dicts():
    turns = with_image_tags([{"images": ["a", "b"], "user": "Same?", "assistant": "yes"}])
    assert turns == [{"user": "<|image_1|><|image_2|>\nSame?", "assistant": "yes"}]


def test_tags_numbered_over_multi_turn_conversation():
    turns = with_image_tags([
        Turn(["a", "b"], "Q1", "A1"),
        Turn([], "Q2", "A2"),
        Turn(["c"], "Q3", "A3"),
    ])
    assert [t["user"] for t in turns] == ["<|image_1|><|image_2|>\nQ1", "Q2", "<|image_3|>\nQ3"]
    assert [t["assistant"] for t in turns] == ["A1", "A2", "A3"]


def test_tags_already_present_are_kept():
    conversation = [Turn(["a", "b"], "Left <|image_1|> right <|image_2|>: same?", "no"), Turn(["c"], "Q", "A")]
    turns = with_image_tags(conversation)
    assert turns[0]["user"] == "Left <|image_1|> right <|image_2|>: same?"
    assert turns[1]["user"] == "<|image_3|>\nQ"


def test_text_only_turn_unchanged():
    assert with_image_tags([Turn([], "Hi", "Hello")]) == [{"user": "Hi", "assistant": "Hello"}]


def test_load_eval_examples_uses_first_turn(clean_folder):
    train = load_eval_examples(clean_folder / "tiny_train.jsonl", clean_folder / "images")
    assert [e.id for e in train] == ["train-0", "train-1", "train-2"]
    assert train[1].prompt_user == "<|image_1|><|image_2|>\nSame?"
    assert train[1].image_paths == [str(clean_folder / "images" / "a.png"), str(clean_folder / "images" / "b.png")]
    assert train[2].prompt_user == "<|image_1|>\nColor?" and train[2].answers == ["red"]  # first turn only
    val = load_eval_examples(clean_folder / "tiny_val.jsonl", clean_folder / "images")
    assert val[0].answers == ["A cat", "cat"]  # the record's answers win over the assistant text
    assert len(load_eval_examples(clean_folder / "tiny_train.jsonl", clean_folder / "images", max_samples=2)) == 2
    with pytest.raises(UserError, match="max_samples=0"):
        load_eval_examples(clean_folder / "tiny_train.jsonl", clean_folder / "images", max_samples=0)


def test_majority_answer_counts_normalised_keeps_spelling_and_breaks_ties_by_first_seen(tmp_path):
    path = write_lines(tmp_path / "m_train.jsonl", [
        record("1", [], assistant="No."), record("2", [], assistant="yes"),
        record("3", [], assistant=" no"), record("4", [], assistant="YES."),
        record("5", [], assistant="maybe"),
    ])
    assert majority_answer(path) == "No."  # "No." and " no" tie as spellings: first seen
    path = write_lines(tmp_path / "n_train.jsonl", [record("1", [], assistant="b"), record("2", [], assistant="B."),
                                                     record("3", [], assistant="a"), record("4", [], assistant="c"),
                                                     record("5", [], assistant="c")])
    assert majority_answer(path) == "b"


class RecordingProcessor:
    """Stands in for Phi3VProcessor: records what `encode_example` is given."""

    def __init__(self):
        self.calls = []

    def encode_example(self, turns, images, num_crops=None):
        self.calls.append((turns, images, num_crops))
        return {"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}


def test_conversation_dataset_opens_every_image_and_tags_turns(clean_folder):
    processor = RecordingProcessor()
    dataset = ConversationDataset(clean_folder / "tiny_train.jsonl", clean_folder / "images", processor, num_crops=4)
    assert len(dataset) == 3
    item = dataset[2]
    assert item["num_images"] == 1 and item["input_ids"] == [1, 2, 3]
    turns, images, num_crops = processor.calls[-1]
    assert turns == [{"user": "<|image_1|>\nColor?", "assistant": "red"}, {"user": "Sure?", "assistant": "yes"}]
    assert num_crops == 4 and len(images) == 1 and images[0].size == (8, 6) and images[0].mode == "RGB"
    assert dataset[1]["num_images"] == 2
    assert len(ConversationDataset(clean_folder / "tiny_train.jsonl", clean_folder / "images", processor, 4, max_samples=1)) == 1


@pytest.fixture(scope="module")
def tiny_processor():
    corpus = ["What is shown? A cat. Same? yes no. Color? red. Sure?"] * 4
    return Phi3VProcessor(Phi3VImageProcessor(num_crops=1, crop_size=28), build_tiny_tokenizer(corpus, 300))


def test_conversation_dataset_with_the_processor_feeds_both_collates(clean_folder, tiny_processor):
    dataset = ConversationDataset(clean_folder / "tiny_train.jsonl", clean_folder / "images", tiny_processor, num_crops=2)
    examples = [dataset[i] for i in range(len(dataset))]
    image_token = tiny_processor.image_token_id
    tokens_per_image = tiny_processor.image_processor.num_image_tokens(6, 8, 2)
    for item, num_images in zip(examples, [1, 2, 1]):
        assert item["num_images"] == num_images
        assert int((item["input_ids"] == image_token).sum()) == num_images * tokens_per_image
        assert item["labels"].shape == item["input_ids"].shape
        assert bool((item["labels"][item["input_ids"] == image_token] == -100).all())  # images are prompt
    # the multi-turn record supervises both answers and nothing else
    supervised = examples[2]["labels"][examples[2]["labels"] != -100]
    assert tiny_processor.decode(supervised).replace(" ", "") == "red<|end|>\n<|endoftext|>yes<|end|>\n<|endoftext|>"

    padded = collate_padded(examples, pad_token_id=tiny_processor.pad_token_id)
    longest = max(len(e["input_ids"]) for e in examples)
    assert padded["input_ids"].shape == padded["labels"].shape == (3, longest)
    assert padded["attention_mask"].sum().item() == sum(len(e["input_ids"]) for e in examples)
    assert padded["image_sizes"].shape == (4, 2)
    assert padded["pixel_values"].shape[0] == sum(e["pixel_values"].shape[0] for e in examples)

    packed = collate_packed(examples)
    assert packed["input_ids"].shape == (1, sum(len(e["input_ids"]) for e in examples))
    assert int((packed["position_ids"] == 0).sum()) == 3


def test_one_random_draws_one_turn_or_answer_per_visit_seeded_by_seed_epoch_index(tmp_path):
    """The recipe's DocVQA collators: one accepted answer (mini set) or one Q/A pair (--full_train)
    at random each time a sample is seen; here seeded, so reruns repeat it and epochs differ."""
    write_png(tmp_path / "images" / "p.png")
    answers = [f"answer {k}" for k in range(8)]
    write_lines(tmp_path / "d_train.jsonl", [
        record("mini", ["p.png"], user="Q?\nAnswer briefly.", assistant=answers[0], answers=answers),
        {"id": "full", "source": "tiny", "conversations": [
            {"images": ["p.png"], "user": f"Q{k}", "assistant": f"A{k}"} if k == 0 else
            {"images": [], "user": f"Q{k}", "assistant": f"A{k}"} for k in range(8)]},
    ])

    def drawn(seed, epochs=range(6)):
        processor = RecordingProcessor()
        dataset = ConversationDataset(tmp_path / "d_train.jsonl", tmp_path / "images", processor, 1,
                                      train_turns="one_random", seed=seed)
        for epoch in epochs:
            for index in range(len(dataset)):
                assert dataset[(index, epoch)]["num_images"] == 1  # the page goes with every drawn pair
        return [turns for turns, _, _ in processor.calls]

    first = drawn(seed=0)
    assert first == drawn(seed=0)  # a rerun (or a resume) draws the same
    assert first != drawn(seed=1)
    mini, full = first[0::2], first[1::2]
    assert all(len(turns) == 1 for turns in first)  # one turn a visit, never the whole conversation
    assert {t[0]["user"] for t in mini} == {"<|image_1|>\nQ?\nAnswer briefly."}
    assert len({t[0]["assistant"] for t in mini}) > 1 and {t[0]["assistant"] for t in mini} <= set(answers)
    assert len({t[0]["user"] for t in full}) > 1  # different pairs across epochs
    assert all(t[0]["user"] == f"<|image_1|>\nQ{t[0]['assistant'][1:]}" for t in full)  # the pair stays a pair


def test_all_turns_is_the_default_and_ignores_the_epoch(clean_folder):
    processor = RecordingProcessor()
    dataset = ConversationDataset(clean_folder / "tiny_train.jsonl", clean_folder / "images", processor, 4)
    dataset[(2, 0)], dataset[(2, 5)]
    assert processor.calls[0][0] == processor.calls[1][0] and len(processor.calls[0][0]) == 2
    with pytest.raises(UserError, match="train_turns='some'"):
        ConversationDataset(clean_folder / "tiny_train.jsonl", clean_folder / "images", processor, 4, train_turns="some")


def test_cached_examples_are_encoded_once_and_the_same_as_fresh_ones(clean_folder, tiny_processor, monkeypatch):
    """A CPU run keeps encoded samples: later epochs reuse them, and they equal a fresh encoding."""
    fresh = ConversationDataset(clean_folder / "tiny_train.jsonl", clean_folder / "images", tiny_processor, 2)
    expected = [fresh[i] for i in range(len(fresh))]
    encode = tiny_processor.encode_example
    calls = []
    monkeypatch.setattr(tiny_processor, "encode_example", lambda *a, **k: calls.append(1) or encode(*a, **k))
    cached = ConversationDataset(clean_folder / "tiny_train.jsonl", clean_folder / "images", tiny_processor, 2,
                                 cache_bytes=1 << 20)
    for epoch in range(3):
        for index, want in enumerate(expected):
            item = cached[(index, epoch)]
            assert item.keys() == want.keys()
            assert all(torch.equal(item[k], want[k]) if isinstance(want[k], torch.Tensor) else item[k] == want[k]
                       for k in want)
            item.pop("pixel_values")  # what a caller does to its dict does not reach the cache
    assert len(calls) == len(expected)  # encoded in the first epoch only

    calls.clear()
    over_budget = ConversationDataset(clean_folder / "tiny_train.jsonl", clean_folder / "images", tiny_processor, 2,
                                      cache_bytes=1)
    over_budget[0], over_budget[0]
    assert len(calls) == 2  # nothing fits in one byte: every visit encodes


def test_cache_keys_on_the_drawn_turn_not_on_the_sample(tmp_path):
    """With `one_random` a sample is encoded anew whenever the draw differs, and reused when it repeats."""
    write_png(tmp_path / "images" / "p.png")
    write_lines(tmp_path / "d_train.jsonl", [
        record("mini", ["p.png"], user="Q?", assistant="a0", answers=[f"a{k}" for k in range(3)])])
    processor = RecordingProcessor()
    dataset = ConversationDataset(tmp_path / "d_train.jsonl", tmp_path / "images", processor, 1,
                                  train_turns="one_random", cache_bytes=1 << 20)
    drawn = [dataset.conversation(0, epoch)[0].assistant for epoch in range(12)]
    for epoch in range(12):
        dataset[(0, epoch)]
    assert [turns[0]["assistant"] for turns, _, _ in processor.calls] == list(dict.fromkeys(drawn))
    assert len(set(drawn)) > 1
