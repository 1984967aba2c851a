"""Tokenizer, image tags, chat format, batching and training examples."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer, LlamaTokenizer

from phi3v.errors import UserError
from phi3v.configuration_phi3v import DEFAULT_IMAGE_TOKEN_ID
from phi3v.image_processing_phi3v import Phi3VImageProcessor
from phi3v.processing_phi3v import Phi3VProcessor
from phi3v.training.demo_tokenizer import build_tiny_tokenizer


def image(width=40, height=30, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def ids(tokenizer, text, bos=True):
    return tokenizer(text, add_special_tokens=bos)["input_ids"]


# -- tokenizer ----------------------------------------------------------------------------------


def test_tiny_tokenizer_has_phi_special_tokens(tiny_tokenizer):
    tok = tiny_tokenizer
    assert (tok.unk_token_id, tok.bos_token_id) == (0, 1) and tok.convert_tokens_to_ids("</s>") == 2
    assert tok.pad_token == tok.eos_token == "<|endoftext|>"  # as the release's tokenizer_config.json
    names = ["<|endoftext|>", "<|assistant|>", "<|system|>", "<|end|>", "<|user|>", "<|image|>"]
    special_ids = tok.convert_tokens_to_ids(names)
    assert len(set(special_ids)) == 6 and max(special_ids) == len(tok) - 1
    assert len(tok) <= 340
    # each special token is one id, never split into pieces
    assert ids(tok, "<|user|>\nhi<|end|>", bos=False)[0] == special_ids[4]
    assert ids(tok, "hello")[0] == tok.bos_token_id


def test_tiny_tokenizer_encodes_any_text_with_byte_fallback(tiny_tokenizer):
    text = "Zürich — 東京 🚀 {x: 3}\ttab"
    encoded = ids(tiny_tokenizer, text, bos=False)
    assert tiny_tokenizer.unk_token_id not in encoded
    assert tiny_tokenizer.decode(encoded) == text


def test_tiny_tokenizer_save_load_round_trip(tiny_tokenizer, tmp_path):
    tiny_tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "<|user|>\nWhat is the date?<|end|>\n<|assistant|>\n42 dollars<|end|>\n<|endoftext|>"
    assert ids(loaded, text) == ids(tiny_tokenizer, text)
    assert ids(loaded, text)[0] == 1
    assert loaded.get_vocab() == tiny_tokenizer.get_vocab()
    assert loaded.pad_token_id == tiny_tokenizer.pad_token_id
    assert loaded.chat_template == tiny_tokenizer.chat_template


def test_tiny_tokenizer_rejects_a_too_small_vocabulary():
    with pytest.raises(UserError, match="vocab_size = 100 is too small"):
        build_tiny_tokenizer(["abc"], vocab_size=100)


# -- chat format --------------------------------------------------------------------------------


def test_chat_template_and_generation_prompt(processor, tiny_tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "<|image_1|>\nWhat?"},
        {"role": "assistant", "content": "42"},
    ]
    rendered = tiny_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == "<|system|>\nBe brief.<|end|>\n<|user|>\n<|image_1|>\nWhat?<|end|>\n<|assistant|>\n42<|end|>\n"
    assert processor.generation_prompt("Hi there") == "<|user|>\nHi there<|end|>\n<|assistant|>\n"


def test_generation_stops_at_the_end_of_the_assistant_turn(processor, tiny_tokenizer):
    vocab = tiny_tokenizer.get_vocab()
    assert processor.stop_token_ids == [vocab["<|end|>"], vocab["<|endoftext|>"]]  # eos is <|endoftext|>


def test_processor_falls_back_to_the_builtin_template():
    tokenizer = LlamaTokenizer(vocab={"<unk>": 0, "<s>": 1, "</s>": 2}, merges=[], add_bos_token=True)
    tokenizer.add_special_tokens({"pad_token": "<|endoftext|>"})
    processor = Phi3VProcessor(Phi3VImageProcessor(crop_size=28), tokenizer)
    assert processor.generation_prompt("q") == "<|user|>\nq<|end|>\n<|assistant|>\n"
    assert processor.image_token_id == DEFAULT_IMAGE_TOKEN_ID


# -- image tags and batching --------------------------------------------------------------------


def test_image_tags_become_image_tokens_and_each_piece_starts_with_bos(processor, tiny_tokenizer):
    first, second = image(40, 30, 0), image(20, 70, 1)
    batch = processor("<|image_1|>\nLeft<|image_2|> right", [first, second])
    counts = processor.image_processor([first, second])["num_img_tokens"]
    image_id = tiny_tokenizer.convert_tokens_to_ids("<|image|>")
    assert processor.image_token_id == image_id
    expected = (
        ids(tiny_tokenizer, "")
        + [image_id] * counts[0]
        + ids(tiny_tokenizer, "\nLeft")
        + [image_id] * counts[1]
        + ids(tiny_tokenizer, " right")
    )
    assert batch["input_ids"].tolist() == [expected]
    assert batch["attention_mask"].tolist() == [[1] * len(expected)]
    assert (batch["input_ids"] == image_id).sum() == sum(counts)
    assert batch["image_sizes"].shape == (2, 2)


def test_image_token_count_equals_num_image_tokens(processor):
    for num_crops in (1, 4, 16):
        for width, height in [(1, 1), (300, 20), (20, 300), (100, 100)]:
            batch = processor("<|image_1|>\nq", [Image.new("RGB", (width, height))], num_crops=num_crops)
            count = (batch["input_ids"] == processor.image_token_id).sum().item()
            assert count == processor.image_processor.num_image_tokens(height, width, num_crops)
            h, w = batch["image_sizes"][0].tolist()
            assert batch["pixel_values"].shape[0] == (h // 28) * (w // 28) + 1


def test_right_and_left_padding(processor, tiny_tokenizer):
    texts = ["<|image_1|>\nWhat is the date on the page?", "Is this meme hateful?"]
    images = [[image()], []]
    single = [processor(t, i)["input_ids"][0].tolist() for t, i in zip(texts, images)]
    long, short = len(single[0]), len(single[1])
    assert long > short
    pad = tiny_tokenizer.pad_token_id

    right = processor(texts, images, padding_side="right")
    assert right["input_ids"].shape == (2, long)
    assert right["input_ids"][1].tolist() == single[1] + [pad] * (long - short)
    assert right["attention_mask"][1].tolist() == [1] * short + [0] * (long - short)

    left = processor(texts, images, padding_side="left")
    assert left["input_ids"][1].tolist() == [pad] * (long - short) + single[1]
    assert left["attention_mask"][1].tolist() == [0] * (long - short) + [1] * short
    assert left["input_ids"][0].tolist() == single[0]
    torch.testing.assert_close(left["pixel_values"], right["pixel_values"])


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_a_ragged_batch_is_padded_as_the_hand_written_padding_did(processor, tiny_tokenizer, padding_side):
    texts = ["a", "<|image_1|>\nWhat is the date on the page?", "Is this meme hateful?", "bb bb"]
    images = [[], [image()], [], []]
    sequences = [processor(t, i)["input_ids"][0].tolist() for t, i in zip(texts, images)]
    assert len({len(s) for s in sequences}) == len(sequences)  # every row a different length
    # The padding the processor wrote by hand before it used the tokenizer's `pad`:
    length = max(len(s) for s in sequences)
    expected_ids = torch.full((len(sequences), length), tiny_tokenizer.pad_token_id, dtype=torch.long)
    expected_mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        start = 0 if padding_side == "right" else length - len(sequence)
        expected_ids[row, start : start + len(sequence)] = torch.tensor(sequence, dtype=torch.long)
        expected_mask[row, start : start + len(sequence)] = 1

    batch = processor(texts, images, padding_side=padding_side)
    assert batch["input_ids"].dtype == batch["attention_mask"].dtype == torch.long
    assert torch.equal(batch["input_ids"], expected_ids) and torch.equal(batch["attention_mask"], expected_mask)


def test_pixel_values_follow_image_order_across_the_batch(processor):
    a, b, c = image(40, 30, 1), image(30, 80, 2), image(90, 20, 3)
    batch = processor(["<|image_1|><|image_2|>\nSame?", "<|image_1|>\nWhat?"], [[a, b], [c]])
    alone = processor.image_processor([a, b, c])
    torch.testing.assert_close(batch["pixel_values"], alone["pixel_values"])
    assert batch["image_sizes"].tolist() == alone["image_sizes"].tolist()


def test_text_only_batch_has_no_pixel_values(processor):
    batch = processor(["a", "bb bb"])
    assert set(batch.keys()) == {"input_ids", "attention_mask"}


@pytest.mark.parametrize(
    "text, count, message",
    [
        ("no tag here", 1, r"lacks <\|image_1\|>"),
        ("<|image_1|> one tag", 2, r"lacks <\|image_2\|>"),
        ("<|image_1|><|image_2|>", 1, r"<\|image_2\|> refers to image 2, but 1 image"),
        ("<|image_2|><|image_1|>", 2, r"<\|image_2\|> comes where <\|image_1\|> is expected"),
        ("<|image_1|><|image_1|>", 2, r"<\|image_1\|> appears more than once"),
        ("<|image_0|>", 1, r"<\|image_0\|> is not a valid tag"),
        ("<|image_1|>", 0, r"refers to image 1, but 0 image"),
    ],
)
def test_tags_that_do_not_match_the_images(processor, text, count, message):
    with pytest.raises(UserError, match=message):
        processor(text, [image(seed=k) for k in range(count)])


def test_bad_call_arguments(processor):
    with pytest.raises(UserError, match="sample 1: 1 image"):
        processor(["<|image_1|>", "missing tag"], [[image()], [image()]])
    with pytest.raises(UserError, match="2 prompts need images as a list of 2 lists"):
        processor(["a", "b"], [image()])
    with pytest.raises(UserError, match="text is an empty list"):
        processor([])
    with pytest.raises(UserError, match="padding_side"):
        processor("a", padding_side="middle")
    with pytest.raises(UserError, match="return_tensors"):
        processor("a", return_tensors="np")
    with pytest.raises(UserError, match="num_crops = 20"):
        processor("<|image_1|>", [image()], num_crops=20)
    with pytest.raises(UserError, match=r"sample 0, image 1 has zero size"):
        processor("<|image_1|>", [Image.new("RGB", (3, 0))])


# -- training examples --------------------------------------------------------------------------


def test_encode_example_masks_the_prompt_and_supervises_the_answer(processor, tiny_tokenizer):
    picture = image()
    example = processor.encode_example([{"user": "<|image_1|>\nWhat is the total?", "assistant": "42"}], [picture])
    prompt = processor("<|user|>\n<|image_1|>\nWhat is the total?<|end|>\n<|assistant|>\n", [picture])
    prompt_ids = prompt["input_ids"][0].tolist()
    target = ids(tiny_tokenizer, "42<|end|>\n<|endoftext|>", bos=False)

    assert example["input_ids"].tolist() == prompt_ids + target
    assert example["labels"].tolist() == [-100] * len(prompt_ids) + target
    assert target[-1] == tiny_tokenizer.pad_token_id
    assert tiny_tokenizer.convert_tokens_to_ids("<|end|>") in target
    assert tiny_tokenizer.bos_token_id not in target
    torch.testing.assert_close(example["pixel_values"], prompt["pixel_values"])
    assert example["image_sizes"].tolist() == prompt["image_sizes"].tolist()


def test_encode_example_multi_turn(processor, tiny_tokenizer):
    first, second = image(seed=1), image(seed=2)
    turns = [
        {"user": "<|image_1|>\nLeft?", "assistant": "yes"},
        {"user": "Sure?", "assistant": "no"},
        {"user": "<|image_2|>\nAnd this?", "assistant": "a dog"},
    ]
    example = processor.encode_example(turns, [first, second])
    counts = processor.image_processor([first, second])["num_img_tokens"]
    labels = example["labels"].tolist()
    input_ids = example["input_ids"].tolist()
    assert len(labels) == len(input_ids)

    supervised = [token for token in labels if token != -100]
    answers = [ids(tiny_tokenizer, f"{a}<|end|>\n<|endoftext|>", bos=False) for a in ("yes", "no", "a dog")]
    assert supervised == answers[0] + answers[1] + answers[2]
    # every supervised token is where the input has it; every prompt token (images too) is masked
    assert all(label in (-100, token) for label, token in zip(labels, input_ids))
    image_positions = [i for i, token in enumerate(input_ids) if token == processor.image_token_id]
    assert len(image_positions) == sum(counts)
    assert all(labels[i] == -100 for i in image_positions)
    # each turn's prompt starts with BOS
    assert input_ids.count(tiny_tokenizer.bos_token_id) >= 3
    assert example["image_sizes"].shape == (2, 2)


def test_encode_example_text_only_and_bad_turns(processor):
    example = processor.encode_example([{"user": "Hi", "assistant": "Hello"}], [])
    assert example["pixel_values"].shape == (0, 3, 28, 28) and example["image_sizes"].shape == (0, 2)
    with pytest.raises(UserError, match="turn 0 must be a dict"):
        processor.encode_example([{"user": "Hi"}], [])
    with pytest.raises(UserError, match="turns must be a non-empty list"):
        processor.encode_example([], [])
    with pytest.raises(UserError, match=r"conversation: <\|image_1\|> appears more than once"):
        processor.encode_example(
            [{"user": "<|image_1|>a", "assistant": "b"}, {"user": "<|image_1|>c", "assistant": "d"}], [image(), image()]
        )


# -- folders ------------------------------------------------------------------------------------


def test_processor_save_load_round_trip(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    loaded = Phi3VProcessor.from_pretrained(tmp_path)
    assert loaded.image_processor.to_dict() == processor.image_processor.to_dict()
    assert loaded.image_token_id == processor.image_token_id
    picture = image()
    text = "<|image_1|>\nWhat is the total?"
    before, after = processor(text, [picture]), loaded(text, [picture])
    assert after["input_ids"].tolist() == before["input_ids"].tolist()
    torch.testing.assert_close(after["pixel_values"], before["pixel_values"])
    decoded = loaded.batch_decode(before["input_ids"], skip_special_tokens=True)
    assert decoded == [loaded.decode(before["input_ids"][0], skip_special_tokens=True)]
    assert "What is the total?" in decoded[0]


def test_from_pretrained_missing_folder(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        Phi3VProcessor.from_pretrained(tmp_path / "nowhere")
