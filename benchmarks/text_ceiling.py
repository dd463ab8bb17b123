"""How far can the frozen text encoder carry a user's held-out words? A ceiling for `reworded_colour_adherence`.

Run: `.venv/bin/python benchmarks/text_ceiling.py [--sprites 400] [--encoder <local Hugging Face folder>]`
(default: the platform's all-MiniLM-L6-v2).

The DiT reads a foreground's prompt only through the frozen encoder's states (its pooled sentence embedding
modulates the layer; cross-attention reads the token states). A prompt in held-out words (`synthetic.reworded`)
can only be followed as far as the encoder places it near the training captions of the same attribute. This
measures that with no DiT at all: foreground captions of random sprites in the training wordings (`varied`) and
in held-out words; each held-out caption's colour (and shape) is read from the training captions by

- nearest neighbour (cosine) of the pooled embedding,
- a logistic-regression probe fitted on the training captions' pooled embeddings (the best linear read-out),
- the same two on the attribute word alone (`"crimson"` against `"red"`, `"scarlet"`, `"cherry"`).

The model's own held-out colour adherence (`layert2v evaluate`) sits against these figures: a model cannot be
expected to read a word its text encoder places among another colour's words.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression

from layert2v.data.synthetic import COLOURS, SHAPES, WORDS, _draw_sprite, sprite_caption
from layert2v.models.text import load_text_encoder

ATTRIBUTES = {"colour": tuple(COLOURS), "shape": SHAPES}


def sprite_captions(count: int, wording: str, seed: int) -> tuple[list[str], dict[str, list[str]]]:
    """`count` random sprites' foreground captions in `wording`, and each caption's colour and shape names."""
    rng = np.random.default_rng(seed)
    texts, labels = [], {name: [] for name in ATTRIBUTES}
    for _ in range(count):
        colour, shape = (values[int(rng.integers(len(values)))] for values in ATTRIBUTES.values())
        texts.append(sprite_caption(_draw_sprite(rng, colour, shape), rng, wording))
        labels["colour"].append(colour)
        labels["shape"].append(shape)
    return texts, labels


def unit(states: np.ndarray) -> np.ndarray:
    """The pooled (first) token state of each prompt, unit length."""
    pooled = states[:, 0].astype(np.float64)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


def read_out(
    train: np.ndarray, train_labels: list[str], test: np.ndarray, test_labels: list[str]
) -> tuple[float, float]:
    """Accuracy of nearest neighbour and of a logistic probe reading `test`'s labels from `train`'s."""
    train_labels, test_labels = np.asarray(train_labels), np.asarray(test_labels)
    nearest = train_labels[np.argmax(test @ train.T, axis=1)]
    probe = LogisticRegression(max_iter=2000).fit(train, train_labels)
    return float((nearest == test_labels).mean()), float((probe.predict(test) == test_labels).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sprites", type=int, default=400, help="captions per wording")
    parser.add_argument("--encoder", type=Path, default=None, help="a local encoder folder to measure instead")
    args = parser.parse_args()
    encoder = load_text_encoder(args.encoder, pooled=True)
    embed = lambda texts: unit(encoder.encode(texts)[0])  # noqa: E731
    train_texts, train_labels = sprite_captions(args.sprites, "varied", seed=0)
    test_texts, test_labels = sprite_captions(args.sprites, "held_out", seed=1)
    train, test = embed(train_texts), embed(test_texts)
    print("| attribute | read from | nearest neighbour | logistic probe | chance |\n|---|---|---|---|---|")
    for name, values in ATTRIBUTES.items():
        nearest, probe = read_out(train, train_labels[name], test, test_labels[name])
        print(f"| {name} | foreground captions | {nearest:.0%} | {probe:.0%} | {1 / len(values):.0%} |")
        seen = [(value, word) for value in values for word in WORDS[value][:-1]]
        held = [(value, WORDS[value][-1]) for value in values]
        nearest, probe = read_out(
            embed([w for _, w in seen]), [v for v, _ in seen], embed([w for _, w in held]), [v for v, _ in held]
        )
        print(f"| {name} | the word alone | {nearest:.0%} | {probe:.0%} | {1 / len(values):.0%} |")


if __name__ == "__main__":
    main()
