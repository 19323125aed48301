"""Prompt sets for benchmarks on real (instruction-tuned) models, built from text every machine has.

    chat_prompts(tokenizer, 4)        # questions and tasks, through the model's chat template
    code_edit_prompts(tokenizer, 4)   # "rewrite this function with one change": the answer repeats the prompt

Code-editing prompts quote a function of the Python standard library (inspect.getsource) and ask for
a small edit, so most of the answer is a copy of the prompt: the workload where prompt lookup pays.
"""
from __future__ import annotations

import inspect

CHAT = [
    "What is the capital of France, and what is it famous for?",
    "Write a short story about a robot who learns to paint.",
    "Explain in simple terms how a rainbow forms.",
    "Give me three tips for staying focused while studying.",
    "What are the main differences between a list and a tuple in Python?",
    "Describe the water cycle in a few sentences.",
    "Write a haiku about autumn leaves.",
    "How do I make a cup of green tea?",
]


def _functions():
    """Short pure-Python functions of the standard library (their source is on every machine)."""
    import calendar
    import colorsys
    import shlex
    import string
    import textwrap

    return [colorsys.rgb_to_hsv, textwrap.indent, shlex.quote, calendar.isleap, string.capwords, textwrap.shorten,
            shlex.join, colorsys.hsv_to_rgb]


EDITS = [
    "Add a docstring to this function and return the code.",
    "Rename the first parameter to `value` everywhere in this function and return the whole function.",
    "Add type hints to this function and return the whole function.",
    "Add a comment above each return statement in this function and return the whole function.",
]


def chat_prompts(tokenizer, n: int) -> list[str]:
    return [tokenizer.apply_chat_template([{"role": "user", "content": q}]) for q in (CHAT * (n // len(CHAT) + 1))[:n]]


def code_edit_prompts(tokenizer, n: int) -> list[str]:
    out = []
    funcs = _functions()
    for i in range(n):
        src = inspect.getsource(funcs[i % len(funcs)])
        ask = f"{EDITS[i % len(EDITS)]}\n\n```python\n{src}```"
        out.append(tokenizer.apply_chat_template([{"role": "user", "content": ask}]))
    return out


WORKLOADS = {"chat": chat_prompts, "code": code_edit_prompts}
