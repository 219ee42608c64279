"""benchmarks/encoder_inference.py's fairness pieces: the inference batching it reports and the identity pooler.

The benchmark compares twinlm's classification head ([CLS] -> Linear) with transformers' BERT classifier, whose
pooler it turns into an exact identity. A tiny random BERT checks that the two then compute the same logits.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
import torch

from twinlm.finetune import length_batches
from twinlm.heads import TaskModel
from twinlm.loading import load_hf

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_length_batches_cover_every_row_once_in_length_order():
    rng = random.Random(0)
    lengths = [rng.randint(3, 60) for _ in range(100)]
    batches = length_batches(lengths, 32)
    assert sorted(i for b in batches for i in b) == list(range(100))
    assert [len(b) for b in batches] == [32, 32, 32, 4]
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(lengths)
    assert length_batches([], 32) == []


def test_identity_pooler_gives_twinlm_logits(tmp_path):
    transformers = pytest.importorskip("transformers")
    from encoder_inference import flops, hf_classifier

    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=101, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=64)
    bert = transformers.BertModel(cfg)  # with a pooler, like all-MiniLM-L6-v2's folder
    with torch.no_grad():
        for p in bert.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    bert.save_pretrained(tmp_path)
    lm, info = load_hf(tmp_path)
    assert any(name.startswith("pooler.") for name in info["extra_tensors"])  # twinlm's head does not use it
    torch.manual_seed(1)
    model = TaskModel(lm, "classify", 2).eval()
    hf = hf_classifier(tmp_path, model.classifier)

    h = torch.randn(3, 7, 32)
    with torch.no_grad():
        assert torch.equal(hf.bert.pooler(h), h[:, 0])  # x @ I + 0 is exact, not merely close
    ids = torch.randint(3, 101, (3, 9))
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 6:] = 0
    ids[1, 6:] = 0
    with torch.inference_mode():
        torch.testing.assert_close(model(ids, mask)[0], hf(input_ids=ids, attention_mask=mask).logits,
                                   rtol=0, atol=1e-5)
    # 2 * (blocks + classifier parameters) per token, plus 4 * L * d * T^2 per sentence
    n = 2 * (4 * 32 * 32 + 4 * 32 + 2 * 32 * 64 + 64 + 32 + 4 * 32) + 32 * 2 + 2
    assert flops([5, 9], model) == 2 * n * 14 + 4 * 2 * 32 * (25 + 81)
