"""Makes tests/data/diverse_beam_hf.json: Hugging Face transformers 4.46's diverse (group) beam search on the shipped
reference target, the reference tests/test_diverse_beam.py compares decspec's `beam(groups = G, diversity = d)` with.
transformers 5.x no longer has num_beam_groups / diversity_penalty, so this runs in a venv with 4.46.3:

    python -m venv --system-site-packages /tmp/hf446 && /tmp/hf446/bin/pip install transformers==4.46.3 "tokenizers<0.21" "huggingface_hub<1"
    /tmp/hf446/bin/python tests/data/make_diverse_beam.py

Prompts are left-padded into one batch (pad id 0, masked); pad_token_id is the EOS, as HF sets it when none is given
(a group that is done takes the pad token, which the later groups' diversity penalty counts).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parents[2]
TARGET = ROOT / "stdlib" / "models" / "reference" / "target"
OUT = Path(__file__).resolve().parent / "diverse_beam_hf.json"
PROMPTS = ["def fibonacci(n):", "import os\n", "class Foo:\n    def"]
NEWLINE = 199  # "\n": an EOS the beams reach within a few tokens
G = 10  # max_new_tokens
# (width, groups, diversity, length_penalty, early_stopping, eos, repetition, prompts)
CASES = [
    (4, 2, 0.5, 1.0, False, NEWLINE, 1.0, 3),
    (6, 3, 1.0, 1.0, False, NEWLINE, 1.0, 3),
    (4, 4, 2.0, 0.5, True, NEWLINE, 1.0, 3),
    (4, 2, 5.0, -0.5, False, NEWLINE, 1.0, 3),  # a penalty strong enough that later groups avoid earlier groups' tokens
    (6, 2, 0.7, 1.0, "never", 0, 1.0, 3),      # the shipped EOS, rarely reached: hypotheses end at max_new_tokens
    (4, 2, 0.5, 1.0, False, NEWLINE, 1.3, 1),  # the repetition penalty after the diversity penalty (one prompt: no padding)
]


def run(hf, ids_list, width, groups, diversity, length_penalty, early_stopping, eos, repetition):
    T = max(map(len, ids_list))
    ids = torch.tensor([[0] * (T - len(p)) + p for p in ids_list])
    mask = torch.tensor([[0] * (T - len(p)) + [1] * len(p) for p in ids_list])
    with torch.no_grad():
        out = hf.generate(ids, attention_mask=mask, num_beams=width, num_beam_groups=groups, diversity_penalty=diversity,
                          num_return_sequences=width, do_sample=False, length_penalty=length_penalty,
                          early_stopping=early_stopping, max_new_tokens=G, eos_token_id=eos, pad_token_id=eos,
                          repetition_penalty=repetition, return_dict_in_generate=True, output_scores=True)
    rows = []
    for row in out.sequences[:, T:].tolist():
        if eos in row:
            row = row[:row.index(eos) + 1]  # padding (the EOS again) after it
        rows.append(row)
    scores = out.sequences_scores.view(len(ids_list), width).tolist()
    return [rows[i * width:(i + 1) * width] for i in range(len(ids_list))], scores


def main() -> None:
    hf = transformers.AutoModelForCausalLM.from_pretrained(TARGET, torch_dtype=torch.float32).eval()
    tok = Tokenizer.from_file(str(TARGET / "tokenizer.json"))
    cases = []
    for width, groups, diversity, lp, early, eos, rep, n in CASES:
        prompts = [tok.encode(t, add_special_tokens=True).ids for t in PROMPTS[:n]]
        beams, scores = run(hf, prompts, width, groups, diversity, lp, early, eos, rep)
        cases.append({"width": width, "groups": groups, "diversity": diversity, "length_penalty": lp,
                      "early_stopping": str(early).lower(), "eos": eos, "repetition": rep, "prompts": prompts,
                      "max_new_tokens": G, "beams": beams, "scores": scores})
    OUT.write_text(json.dumps({"made_by": "python tests/data/make_diverse_beam.py (transformers " + transformers.__version__
                               + ", torch " + torch.__version__ + ")", "cases": cases}, indent=1) + "\n")
    print(f"wrote {OUT} ({len(cases)} cases)")


if __name__ == "__main__":
    main()
