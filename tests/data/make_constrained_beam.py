"""Makes tests/data/constrained_beam_hf.json: Hugging Face transformers 4.46's lexically constrained beam search
(`generate(num_beams=..., force_words_ids=...)`: phrasal constraints, ConstrainedBeamSearchScorer) on the shipped
reference target, the reference tests/test_search_beams.py compares decspec's `constrained_beam(...)` with.
transformers 5.x no longer has it, so this runs in a venv with 4.46.3:

    python -m venv --system-site-packages /tmp/hf446 && /tmp/hf446/bin/pip install transformers==4.46.3 "tokenizers<0.21" "huggingface_hub<1"
    /tmp/hf446/bin/python tests/data/make_constrained_beam.py

One prompt per case (HF replays each hypothesis's constraints from the whole sequence, prompt and left padding
included; decspec from the prompt and the hypothesis, with no padding). pad_token_id is the EOS.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parents[2]
TARGET = ROOT / "stdlib" / "models" / "reference" / "target"
OUT = Path(__file__).resolve().parent / "constrained_beam_hf.json"
NEWLINE = 199  # "\n"
G = 10  # max_new_tokens
# (prompt, words, width, length_penalty, early_stopping, eos)
CASES = [
    ("def fibonacci(n):", ["print"], 4, 1.0, False, 0),
    ("def fibonacci(n):", ["print"], 4, 1.0, False, NEWLINE),
    ("import os\n", ["return", "self"], 3, 1.0, False, 0),
    ("class Foo:\n    def", [" = 0"], 4, 0.5, True, NEWLINE),
    ("def add(a, b):", ["return a", "result"], 5, 1.0, "never", NEWLINE),
    ("import os\n", ["import"], 4, 1.0, False, NEWLINE),  # hypotheses that meet the phrase end at the EOS
    ("x = 1\n", ["print", "x"], 3, 1.0, True, NEWLINE),
]


def main() -> None:
    hf = transformers.AutoModelForCausalLM.from_pretrained(TARGET, torch_dtype=torch.float32).eval()
    tok = Tokenizer.from_file(str(TARGET / "tokenizer.json"))
    cases = []
    for text, words, width, lp, early, eos in CASES:
        prompt = tok.encode(text, add_special_tokens=True).ids
        phrases = [tok.encode(w, add_special_tokens=False).ids for w in words]
        with torch.no_grad():
            out = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                              num_beams=width, num_return_sequences=width, force_words_ids=phrases, do_sample=False,
                              length_penalty=lp, early_stopping=early, max_new_tokens=G, eos_token_id=eos,
                              pad_token_id=eos, return_dict_in_generate=True, output_scores=True)
        beams = []
        for row in out.sequences[:, len(prompt):].tolist():
            if eos in row:
                row = row[:row.index(eos) + 1]
            beams.append(row)
        cases.append({"prompt": prompt, "words": words, "phrases": phrases, "width": width, "length_penalty": lp,
                      "early_stopping": str(early).lower(), "eos": eos, "max_new_tokens": G, "beams": beams,
                      "scores": out.sequences_scores.tolist()})
    OUT.write_text(json.dumps({"made_by": "python tests/data/make_constrained_beam.py (transformers " + transformers.__version__
                               + ", torch " + torch.__version__ + ")", "cases": cases}, indent=1) + "\n")
    print(f"wrote {OUT} ({len(cases)} cases)")


if __name__ == "__main__":
    main()
