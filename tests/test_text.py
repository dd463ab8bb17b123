"""The text encoder: the BERT path gives transformers' numbers for the shipped MiniLM (tests/test_pipeline.py checks
that generating imports neither transformers nor diffusers)."""

import json

import numpy as np

from layert2v.models.text import TextEncoder

CAPTIONS = [
    "a red circle moving right",
    "navy stripes with a still camera",
    "I'd like a huge amethyst six-sided shape drifting up over a crimson gradient, please " * 3,  # truncated
    "ÉTÉ café naïve 東京 don't",  # accents, CJK, punctuation: the normaliser and pre-tokeniser at work
    "",
]


def test_the_bert_path_matches_transformers_on_the_shipped_encoder() -> None:
    ours, reference = (
        TextEncoder(max_tokens=24, pooled=True),
        TextEncoder(max_tokens=24, pooled=True, transformers=True),
    )
    assert ours.count_tokens(CAPTIONS) == reference.count_tokens(CAPTIONS) and max(ours.count_tokens(CAPTIONS)) > 24
    assert ours.dim == reference.dim == 384
    for captions, longest in ((CAPTIONS, 24), (CAPTIONS[:2], 8)):  # padded to the longest of the batch
        (states, mask), (expected, expected_mask) = ours.encode(captions), reference.encode(captions)
        assert np.array_equal(mask, expected_mask) and mask.sum(1).max() == longest
        np.testing.assert_allclose(states, expected, atol=1e-5)
        assert np.abs(expected).max() > 1


def test_only_a_plain_bert_folder_runs_on_the_package_bert() -> None:
    """Relative positions, another GELU or another architecture go to transformers, which knows them."""
    encoder = TextEncoder(max_tokens=8)
    config = json.loads((encoder.path / "config.json").read_text())
    assert encoder.plain_bert(config)
    for change in ({"position_embedding_type": "relative_key"}, {"hidden_act": "gelu_new"}, {"model_type": "t5"}):
        assert not encoder.plain_bert(config | change), change


def test_shape_words_of_any_wording_become_neutral_and_nothing_else_does() -> None:
    from layert2v.models.shape_words import without_shape_words

    assert without_shape_words("a red five-pointed star moving left") == "a red shape moving left"
    assert without_shape_words("a tiny Disc and a honeycomb cell over sand") == "a tiny shape and a shape over sand"
    assert without_shape_words("a pentagram, a six-sided shape") == "a shape, a shape"  # held-out words too
    for untouched in ("a red car drifting", "stardust over squares", "a red shape"):
        assert without_shape_words(untouched) == untouched
