"""Generate a tiny random-weight Llama model that vLLM can serve on a CPU.

Runs ONLY under the vLLM virtualenv (it imports torch, transformers and tokenizers);
gateway code must never import it. `selfhost.vllm_cpu.ensure_tiny_model` runs it as a
script:

    .venv-vllm/bin/python selfhost/tiny_model.py DEST

No weights can be downloaded on CI, so everything is built here: a byte-level BPE
tokenizer trained on a few sentences, a chat template, and a 2-layer Llama with random
weights. The text it generates is gibberish, but token counts, streaming, usage, timing
and metrics through vLLM are real. Fixed seeds make the output reproducible.

The directory is written to DEST.tmp and renamed into place, so a crash never leaves a
half-written model behind; the marker file is written last.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any

SEED = 1234
VOCAB_SIZE = 384
MARKER = ".tiny-model.json"

BOS, END, PAD = "<|bos|>", "<|end|>", "<|pad|>"
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>", "<|tool|>", "<|developer|>"]
SPECIAL_TOKENS = [BOS, END, PAD, *ROLE_TOKENS]

# Renders each message content verbatim followed by <|end|>. transformers implements
# continue_final_message by appending a tag to the final content, rendering, and cutting
# the text at the tag: that only works if the content is emitted unmodified (no strip or
# trim filters). The literal "content" must also appear in the template.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% endif %}"
    "{{ '<|end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello! How can I help you today?",
    "Turnout routes each request to a self-hosted pool or an external provider.",
    "Tokens are counted, metered and billed per team.",
    "Streaming responses arrive one chunk at a time.",
    "Once upon a time there was a small model that knew very few words.",
    "What is the capital of France? The capital of France is Paris.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000.",
    "def main():\n    print('hello, world')\n",
    "Latency, throughput, retries, fallbacks and budgets.",
]


def build_tokenizer() -> Any:
    """Train a byte-level BPE on CORPUS and wrap it for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        # Every byte is in the vocabulary, so any text (and any sampled id) round-trips.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Repeating the corpus gives the trainer enough pair counts to reach VOCAB_SIZE.
    tok.train_from_iterator(CORPUS * 4, trainer)
    # Like Llama: /v1/completions (add_special_tokens=True) gets a BOS; chat prompts get
    # it from the template, since vLLM tokenizes rendered chats without special tokens.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A",
        pair=f"{BOS} $A {BOS} $B",
        special_tokens=[(BOS, tok.token_to_id(BOS))],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=END,
        pad_token=PAD,
        chat_template=CHAT_TEMPLATE,
        model_max_length=4096,
    )


def build_model(tok: Any) -> Any:
    """A 2-layer Llama with random weights; head_dim 64 is what the CPU kernel needs."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=4096,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config)
    return model.to(torch.bfloat16)


def recipe_hash() -> str:
    """Hash of this file: a changed recipe invalidates models built by an older one."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


def _check_replaceable(dest: Path) -> None:
    # dest comes from the command line: only ever replace an earlier model (or nothing).
    if dest.exists() and any(dest.iterdir()) and not (dest / "config.json").exists():
        raise SystemExit(f"{dest} exists and does not hold a model; refusing to replace it")


def generate(dest: Path) -> None:
    _check_replaceable(dest)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = build_tokenizer()
    model = build_model(tokenizer)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    marker = {"recipe_sha256": recipe_hash(), "vocab_size": len(tokenizer)}
    (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: tiny_model.py DEST", file=sys.stderr)
        return 2
    generate(Path(argv[0]).resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
