"""The training script, end to end on a toy corpus: tokenizer, a few steps of each stage, save, reload."""
from __future__ import annotations

import torch

from decspec.stdlib.models import train
from decspec.stdlib.models.pretrained import load_transformer
from decspec.stdlib.models.transformer import TransformerConfig

TEXTS = [f"def f{i}(x):\n    return x * {i} + {i * i}\n\n\nclass C{i}:\n    pass\n" for i in range(40)]


def test_corpus_holds_out_the_evaluation_modules():
    trained, heldout = train.corpus_files()
    names = {p.name for p in heldout}
    assert {"argparse.py", "textwrap.py", "decoder.py"} <= names
    assert not {p for p in trained if p.name in {"argparse.py", "textwrap.py", "test_argparse.py"}}
    assert not any("site-packages" in str(p) for p in trained)


def test_stages_run_save_and_reload(tmp_path):
    tok = train.train_tokenizer(TEXTS, vocab_size=300)
    stream = train.encode(tok, TEXTS)
    assert stream[0] == tok.token_to_id(train.EOS) == 0
    config = TransformerConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                               tie_word_embeddings=True, eos_token_id=0)
    seq, train.SEQ_LEN = train.SEQ_LEN, 32
    try:
        logs = []
        model = train.train_lm(config, stream, steps=30, batch=8, lr=3e-3, seed=0, exit_fraction=0.25, log=logs.append)
        heldout = train.eval_windows(stream, 33, limit=4)
        losses = train.evaluate_lm(model, heldout)
        assert len(losses) == 2 and losses[-1] < 5.0  # down from ln(300) = 5.7
        heads = train.train_heads("hydra", model, stream, steps=5, batch=4, lr=1e-3, seed=1, log=logs.append)
        small = TransformerConfig(**{**config.__dict__, "num_hidden_layers": 1})
        draft = train.train_lm(small, stream, steps=20, batch=8, lr=3e-3, seed=2, exit_fraction=0.0, log=logs.append, teacher=model)
        assert train.evaluate_lm(draft, heldout)[-1] < 5.5  # distilled from the target
    finally:
        train.SEQ_LEN = seq
    assert any("step 29/30" in line for line in logs)
    train.save_model(model, tok, tmp_path / "m")
    train.save_heads({"hydra": heads}, tmp_path / "m")
    loaded = load_transformer(tmp_path / "m")
    x = torch.tensor([[0, 5, 6, 7]])
    expected = model.forward(x, model.new_cache(1, 8)).logits
    assert torch.allclose(loaded.forward(x, loaded.new_cache(1, 8)).logits, expected, atol=0.05)  # float16 on disk
    assert set(loaded.heads) == {"hydra"} and loaded.tokenizer.vocab_size == 300
