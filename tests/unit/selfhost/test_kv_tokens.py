"""Requests tokenized as vLLM tokenizes them, with a tokenizer trained here (the real-vLLM
test compares with a replica's own /tokenize): the chat template's render, pieces between
added tokens encoded apart and cached, and what cannot be keyed."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from gateway.canonical import CanonicalRequest
from selfhost.kv_tokens import HfTokenizer

SPECIAL = ["<|bos|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
TEMPLATE = ("{{ bos_token }}{% for m in messages %}{{ '<|' + m['role'] + '|>' }}"
            "{{ m['content'] }}<|end|>{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.fixture(scope="module")
def tokdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 8, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<|bos|> $A", special_tokens=[("<|bos|>", tok.token_to_id("<|bos|>"))])
    d = tmp_path_factory.mktemp("tok")
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<|bos|>", "eos_token": {"content": "<|end|>"},
         "chat_template": TEMPLATE}))
    return d


def chat(*messages: tuple[str, object], **extra: object) -> CanonicalRequest:
    return CanonicalRequest("chat", "m", {"messages": [{"role": r, "content": c}
                                                       for r, c in messages], **extra})


def test_a_chat_is_its_rendered_template_encoded(tokdir: Path) -> None:
    t = HfTokenizer(tokdir)
    whole = Tokenizer.from_file(str(tokdir / "tokenizer.json"))
    req = chat(("system", "the lazy dog"), ("user", "the quick fox"))
    text = "<|bos|><|system|>the lazy dog<|end|><|user|>the quick fox<|end|><|assistant|>"
    assert t.render_chat(req.body) == text
    assert t.tokens(req) == whole.encode(text, add_special_tokens=False).ids
    # Text parts are one string joined by newlines, as vLLM gives a string template.
    parts = chat(("user", [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]))
    assert t.tokens(parts) == t.tokens(chat(("user", "a\nb")))
    completion = CanonicalRequest("completions", "m", {"prompt": "the dog"})
    assert t.tokens(completion) == whole.encode("the dog").ids  # with its BOS


def test_pieces_encode_as_the_whole_text(tokdir: Path) -> None:
    t = HfTokenizer(tokdir)
    whole = Tokenizer.from_file(str(tokdir / "tokenizer.json"))
    rng = random.Random(1)
    words = ["the", "quick", "<|end|>", "<|user|>", " ", "  ", "\n", "é", "✓", "dog!", "<|bos"]
    for _ in range(500):
        text = "".join(rng.choice(words) for _ in range(rng.randrange(40)))
        assert t.encode(text) == whole.encode(text, add_special_tokens=False).ids, text


def test_what_cannot_be_keyed(tokdir: Path) -> None:
    t = HfTokenizer(tokdir)
    image = chat(("user", [{"type": "image_url", "image_url": {"url": "data:,"}}]))
    assert t.tokens(image) is None
    assert t.tokens(CanonicalRequest("embeddings", "m", {"input": "x"})) is None
