"""Chat (issue 17, item 3): `messages=[...]` in generate and stream, rendered with the model's chat template and
encoded exactly as the model's own Hugging Face tokenizer does (`apply_chat_template(..., tokenize=True)`: no
special tokens added beyond the template's, so a BOS-adding tokenizer does not get two); `decspec run --chat`
without --prompt reads turns from stdin and keeps the conversation.
"""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest

import decspec
from decspec import DecError
from decspec.cli import main
from decspec.stdlib.models.pretrained import REFERENCE, reference_models
from decspec.stdlib.models.table import TableModel
from decspec.stdlib.models.tokenizer import Tokenizer

TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CONVERSATION = [{"role": "system", "content": "Answer in Python."}, {"role": "user", "content": "Sort a list, café ☕"}]


def with_template(tmp_path: Path, role: str = "target") -> Path:
    """A copy of a shipped reference model whose tokenizer has a chat template (its post-processor adds a BOS)."""
    folder = tmp_path / role
    shutil.copytree(REFERENCE / role, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": TEMPLATE}))
    return folder


class Chatty:
    """A model with another tokenizer (the reference models are shared: never changed in place)."""

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer

    def __getattr__(self, name):
        return getattr(self.model, name)


@pytest.fixture(scope="module")
def chat_tokenizer(tmp_path_factory):
    return Tokenizer.from_dir(with_template(tmp_path_factory.mktemp("chat")))


@pytest.fixture(scope="module")
def chat_decoder(chat_tokenizer):
    models = reference_models()
    return decspec.compile("specs/speculative.dec", target=Chatty(models["target"], chat_tokenizer), draft=models["draft"], k=3)


def test_chat_ids_are_hugging_faces_with_one_bos(tmp_path):
    transformers = pytest.importorskip("transformers")
    folder = with_template(tmp_path)
    ours = Tokenizer.from_dir(folder)
    theirs = transformers.AutoTokenizer.from_pretrained(str(folder))
    want = theirs.apply_chat_template(CONVERSATION, add_generation_prompt=True, tokenize=True)
    want = want["input_ids"] if not isinstance(want, list) else want
    assert ours.encode_chat(CONVERSATION) == list(want)
    assert want.count(ours.bos_token_id) == 1 and want[0] == ours.bos_token_id
    assert ours.encode_prompt("x = 1") == theirs("x = 1").input_ids  # plain text: the post-processor's BOS, as HF


def test_templates_render_as_in_hugging_face(tmp_path):
    """The environment's extras: loop controls, tojson keeping non-ASCII, strftime_now, {% generation %} blocks."""
    transformers = pytest.importorskip("transformers")
    folder = with_template(tmp_path)
    template = ("{% for m in messages %}{% if m['role'] == 'system' %}{% continue %}{% endif %}{{ m | tojson }}"
                "{% generation %}[{{ m['content'] }}]{% endgeneration %}{% if loop.index > 2 %}{% break %}{% endif %}{% endfor %}"
                "{{ strftime_now('%Y') | length }}")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": template}))
    conversation = [*CONVERSATION, {"role": "assistant", "content": "ok"}, {"role": "user", "content": "never"}]
    want = transformers.AutoTokenizer.from_pretrained(str(folder)).apply_chat_template(conversation, tokenize=False)
    assert Tokenizer.from_dir(folder).apply_chat_template(conversation, add_generation_prompt=False) == want
    assert "café ☕" in want and "never" not in want


def test_smollm2_chat_ids_are_hugging_faces():
    transformers = pytest.importorskip("transformers")
    from decspec.stdlib.models.registry import is_pulled, model_dir

    if not is_pulled("smollm2-135m-instruct"):
        pytest.skip("SmolLM2 is not pulled (decspec pull smollm2-135m-instruct)")
    folder = model_dir("smollm2-135m-instruct")
    ours, theirs = Tokenizer.from_dir(folder), transformers.AutoTokenizer.from_pretrained(str(folder))
    for conversation in (CONVERSATION, CONVERSATION[1:], [*CONVERSATION, {"role": "assistant", "content": "sorted(x)"},
                                                         {"role": "user", "content": "<|im_end|> and more"}]):
        want = theirs.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True)
        want = want["input_ids"] if not isinstance(want, list) else want
        assert ours.encode_chat(conversation) == list(want)
    assert ours.encode_prompt("Hi") == theirs("Hi").input_ids  # SmolLM2 adds no BOS to plain text


def test_generate_and_stream_take_messages(chat_decoder, chat_tokenizer):
    ids = chat_tokenizer.encode_chat(CONVERSATION)
    want = chat_decoder.generate([ids], max_new_tokens=12, seed=3)
    got = chat_decoder.generate(messages=CONVERSATION, max_new_tokens=12, seed=3)
    assert got.tokens == want.tokens and got.text == want.text
    stream = chat_decoder.stream(messages=CONVERSATION, max_new_tokens=12, seed=3)
    assert "".join(d.text for d in stream) == want.text[0] and stream.result.tokens == want.tokens
    two = chat_decoder.generate(messages=[CONVERSATION, CONVERSATION[1:]], max_new_tokens=12, seed=3)
    assert len(two.tokens) == 2
    assert chat_decoder.generate([chat_tokenizer.encode_chat(CONVERSATION[1:])], max_new_tokens=12, seed=3).tokens[0] == \
        chat_decoder.generate(messages=[CONVERSATION[1:]], max_new_tokens=12, seed=3).tokens[0]


@pytest.mark.parametrize("messages, message", [
    ([], "messages is empty"), ([[]], r"messages\[0\] is empty"), ("Hi", r"messages must be a list .* \(got 'Hi' \(a str\)\)"),
    ([{}], r"messages\[0\] has role None"), ([{"role": "user"}], r"messages\[0\] \(user\) has content None"),
    ([{"role": 1, "content": "x"}], r"has role 1 \(an int\)"), ([{"role": "", "content": "x"}], "has role ''"),
    ([{"role": "user", "content": [{"type": "text", "text": "x"}]}], "content is a string"),
    (["Hi"], r"messages\[0\] is 'Hi' \(a str\), not a message"), ([{"role": "user", "content": "x"}, ["y"]], r"messages\[1\] is \['y'\]"),
    ([[{"role": "user", "content": "x"}], [{"role": "user", "content": 3}]], r"messages\[1\]\[0\] \(user\) has content 3"),
    ([{"role": "user", "content": "a\ud800"}], "lone surrogate"),
])
def test_bad_messages_say_what_is_wrong(chat_decoder, messages, message):
    with pytest.raises(DecError, match=message):
        chat_decoder.generate(messages=messages, max_new_tokens=2)


def test_messages_need_a_template_a_tokenizer_and_no_input_ids(chat_decoder):
    with pytest.raises(DecError, match="input_ids or messages, not both"):
        chat_decoder.generate("x", messages=CONVERSATION)
    with pytest.raises(DecError, match="has no chat template"):
        decspec.compile("specs/speculative.dec").generate(messages=CONVERSATION, max_new_tokens=2)
    tables = decspec.compile("specs/speculative.dec", target=TableModel.random(8, 1, seed=0), draft=TableModel.random(8, 1, seed=1))
    with pytest.raises(DecError, match="carries no tokenizer; pass input_ids"):
        tables.generate(messages=CONVERSATION)


def test_run_chat_reads_turns_and_keeps_the_conversation(tmp_path, monkeypatch, capsys):
    folder = with_template(tmp_path, "draft")  # the 1-layer reference model: fast
    seen = []
    stream = decspec.Decoder.stream

    def spy(self, *args, messages=None, **kwargs):
        seen.append([dict(m) for m in messages])
        return stream(self, *args, messages=messages, **kwargs)

    monkeypatch.setattr(decspec.Decoder, "stream", spy)
    monkeypatch.setattr("sys.stdin", io.StringIO("def add(a, b):\nand subtract?\n\nnot read\n"))
    assert main(["run", "specs/autoregressive.dec", "--target", str(folder), "--chat", "--max-new-tokens", "6"]) == 0
    out, err = capsys.readouterr()
    assert len(seen) == 2 and [m["role"] for m in seen[1]] == ["user", "assistant", "user"]
    first_reply = seen[1][1]["content"]
    assert seen[1][0]["content"] == "def add(a, b):" and seen[1][2]["content"] == "and subtract?"
    assert out.startswith(first_reply + "\n") and out.endswith("\n") and "# rounds" not in out  # replies only; stats on stderr
    assert err.count("> ") == 3 and "# chat:" in err and err.count("# rounds") == 2


def test_run_chat_errors(tmp_path, capsys):
    assert main(["run", "specs/autoregressive.dec", "--chat"]) == 1
    assert "has a chat template" in capsys.readouterr().err
    folder = with_template(tmp_path, "draft")
    assert main(["run", "specs/autoregressive.dec", "--target", str(folder), "--chat", "--batch", "2"]) == 1
    assert "drop --batch" in capsys.readouterr().err
    assert main(["run", "specs/autoregressive.dec", "--target", str(folder), "--chat", "--prompt", "Hi", "--max-new-tokens", "3"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() and "#" not in out  # the reply on stdout, the header and stats on stderr
    assert err.splitlines()[0].startswith("# decoder") and err.splitlines()[-1].startswith("# rounds")
