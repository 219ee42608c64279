"""Masked-model inference: fill-mask with several masks, joint filling and mask-predict (one iterative unmasking)."""

from __future__ import annotations

import pytest

from helpers import peaked_model
from twinlm.masked import fill_mask, fill_mask_joint, mask_predict
from twinlm.model import LanguageModel
from twinlm.tokenizer import Tokenizer, train_tokenizer


@pytest.fixture(scope="module")
def char_tok(tmp_path_factory) -> Tokenizer:
    corpus = tmp_path_factory.mktemp("chars") / "c.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog.\n\nTHE END, said she; (42)!\n")
    return train_tokenizer([corpus], kind="char", vocab_size=0)


def masked_model(tok: Tokenizer, seed: int = 0) -> LanguageModel:
    return peaked_model(tok.vocab_size, "bidirectional", 96, "pre", seed)


def test_mask_predict_fills_every_mask(char_tok):
    model = masked_model(char_tok)
    out = mask_predict(model, char_tok, "the quick", max_new_tokens=12, steps=4)
    assert len(out.token_ids) == 12
    assert not set(out.token_ids) & set(char_tok.special_ids)
    assert len(out.text) == 12  # char tokens: one character each


def test_fill_mask_several_masks_and_joint_filling(char_tok):
    model = masked_model(char_tok)
    text = "the [MASK]uick [MASK]rown"
    preds = fill_mask(model, char_tok, text, top_k=3)
    assert len(preds) == 2 and all(len(p) == 3 for p in preds)
    assert all("[MASK]" in p.sequence for p in preds[0])  # the other blank stays a blank
    joint = fill_mask_joint(model, char_tok, text)
    assert len(joint.token_ids) == 2 and "[MASK]" not in joint.sequence
    assert not set(joint.token_ids) & set(char_tok.special_ids)
    # one mask: the joint filling is the independent argmax
    single = fill_mask(model, char_tok, "the [MASK]uick", top_k=1)[0][0]
    assert fill_mask_joint(model, char_tok, "the [MASK]uick").token_ids == [single.token_id]


def test_one_round_of_mask_predict_is_the_independent_argmax(char_tok):
    model = masked_model(char_tok, seed=1)
    independent = [p[0].token_id for p in fill_mask(model, char_tok, "the quick" + "[MASK]" * 6, top_k=1)]
    assert mask_predict(model, char_tok, "the quick", max_new_tokens=6, steps=1).token_ids == independent


def test_joint_filling_fixes_the_most_confident_blank_first(char_tok):
    model = masked_model(char_tok, seed=2)
    text = "[MASK]he qu[MASK]ck [MASK]"
    first = fill_mask(model, char_tok, text, top_k=1)
    best = max(range(3), key=lambda i: first[i][0].score)
    joint = fill_mask_joint(model, char_tok, text)
    # the first blank fixed keeps its independent prediction and probability; the others saw it
    assert joint.token_ids[best] == first[best][0].token_id
    assert joint.scores[best] == pytest.approx(first[best][0].score)
