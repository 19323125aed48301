"""Make tests/data/dola_hf.json: Hugging Face's DoLa (transformers 4.46, the last release with `dola_layers`) on the
shipped reference target, greedy, for a few prompts and candidate-layer lists. tests/test_combine.py decodes the same
prompts with specs/dola.dec and compares token for token.

    python -m venv --system-site-packages /tmp/venv-hf
    /tmp/venv-hf/bin/pip install --no-deps transformers==4.46.3 tokenizers==0.20.3 huggingface_hub==0.36.2
    /tmp/venv-hf/bin/python tests/data/make_dola_fixture.py
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer
from transformers import LlamaForCausalLM

ROOT = Path(__file__).resolve().parents[2]
TARGET = ROOT / "stdlib" / "models" / "reference" / "target"
PROMPTS = ["def add(a, b):\n    return", "import os\nimport", "class Stack:\n    def __init__(self):\n        self.", "for i in range("]
LAYERS = [[1, 2, 3], [2, 4], [0], [3]]
NEW_TOKENS = 16


def main() -> None:
    assert transformers.__version__.startswith("4.46"), transformers.__version__
    tokenizer = Tokenizer.from_file(str(TARGET / "tokenizer.json"))
    model = LlamaForCausalLM.from_pretrained(TARGET, torch_dtype=torch.float32).eval()
    cases = []
    for layers in LAYERS:
        for text in PROMPTS:
            ids = tokenizer.encode(text).ids
            with torch.no_grad():
                out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                     dola_layers=layers, do_sample=False, repetition_penalty=1.0, max_new_tokens=NEW_TOKENS,
                                     pad_token_id=model.config.eos_token_id)
            cases.append({"layers": layers, "prompt": ids, "tokens": out[0, len(ids):].tolist()})
    fixture = {"source": f"transformers {transformers.__version__} generate(dola_layers=..., do_sample=False, "
                         f"repetition_penalty=1.0, max_new_tokens={NEW_TOKENS}) on stdlib/models/reference/target (float32)",
               "command": "python tests/data/make_dola_fixture.py (in a venv with transformers 4.46.3)",
               "relative_top": 0.1, "eos_token_id": model.config.eos_token_id, "cases": cases}
    text = json.dumps(fixture, indent=1)
    for case in cases:  # one line per case
        text = text.replace(json.dumps(case, indent=1).replace("\n", "\n  "), json.dumps(case))
    (ROOT / "tests" / "data" / "dola_hf.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
