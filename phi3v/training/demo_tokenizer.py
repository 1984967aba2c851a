"""The demo's tokenizer: a small Llama-style tokenizer trained on the demo corpus, with Phi's special tokens."""

from __future__ import annotations

import json
from typing import Iterable

from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import LlamaTokenizer

from phi3v.errors import UserError
from phi3v.processing_phi3v import BOS, CHAT_SPECIAL_TOKENS, CHAT_TEMPLATE, EOS, PAD, UNK


def build_tiny_tokenizer(corpus: Iterable[str], vocab_size: int) -> LlamaTokenizer:
    """Train a small Llama-style tokenizer (BPE over Metaspace words, byte fallback) with Phi's special tokens.

    Ids follow the official layout: 0 `<unk>`, 1 `<s>`, 2 `</s>`, 3..258 the byte tokens, then the
    learned pieces, then `<|endoftext|>` (pad and eos, as in the release) and the chat tokens. `len(tokenizer) <= vocab_size`.
    """
    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    base_tokens = [UNK, BOS, EOS] + byte_tokens
    num_added = 1 + len(CHAT_SPECIAL_TOKENS)
    smallest = len(base_tokens) + num_added + 1
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < smallest:
        raise UserError(f"vocab_size = {vocab_size!r} is too small: use at least {smallest} (bytes + special tokens).")
    model_vocab_size = vocab_size - num_added

    trainer_tokenizer = Tokenizer(models.BPE(unk_token=UNK, byte_fallback=True))
    # Split at word starts while learning so merges stay inside words, as sentencepiece's do.
    trainer_tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    trainer = trainers.BpeTrainer(
        vocab_size=model_vocab_size,
        special_tokens=base_tokens,  # reserves ids 0..258 in this order
        limit_alphabet=max(1, model_vocab_size - len(base_tokens)),  # rarer characters use byte fallback
        show_progress=False,
    )
    trainer_tokenizer.train_from_iterator(corpus, trainer)
    learned = json.loads(trainer_tokenizer.to_str())["model"]

    tokenizer = LlamaTokenizer(
        vocab=learned["vocab"],
        merges=[tuple(pair) for pair in learned["merges"]],
        add_bos_token=True,
    )
    # eos is `<|endoftext|>`, as in the release's tokenizer_config.json (the recipe stops generation there)
    tokenizer.add_special_tokens({"pad_token": PAD, "eos_token": PAD, "additional_special_tokens": CHAT_SPECIAL_TOKENS})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
