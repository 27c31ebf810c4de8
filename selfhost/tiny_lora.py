"""Generate a tiny LoRA adapter for the tiny model (`tiny_model.py`), with peft.

Runs ONLY under the vLLM virtualenv (torch, transformers, peft); gateway code never
imports it. `selfhost.vllm_cpu.ensure_tiny_lora` runs it as a script:

    .venv-vllm/bin/python selfhost/tiny_lora.py MODEL_DIR DEST

Rank 8 on the attention's q and v projections, random (not zero) weights so the adapter
changes what the model says; a fixed seed makes it reproducible. Written to DEST.tmp and
renamed into place; the marker file is written last.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

SEED = 4321
MARKER = ".tiny-lora.json"


def generate(model_dir: Path, dest: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    if dest.exists() and any(dest.iterdir()) and not (dest / MARKER).exists():
        raise SystemExit(f"{dest} exists and does not hold an adapter; refusing to replace it")
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    base = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)
    torch.manual_seed(SEED)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                        lora_dropout=0.0, init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(tmp)
    recipe = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
    (tmp / MARKER).write_text(json.dumps({"recipe_sha256": recipe}) + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: tiny_lora.py MODEL_DIR DEST", file=sys.stderr)
        return 2
    generate(Path(argv[0]).resolve(), Path(argv[1]).resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
