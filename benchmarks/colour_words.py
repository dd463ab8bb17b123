"""Held-out colour words read through a colour lexicon: the samples' adherence with the model's own words against
the prompts as written (`models.colour_words`).

Run: `.venv/bin/python benchmarks/colour_words.py --model <model folder> --prepared <its prepared data>
[--prompts 32] [--params params.yaml]`

1. The lexicon alone, no model: every synonym of `synthetic.WORDS` read against the training words of all lists
   (what a model trained on `varied` captions records; a training word against the others), and whether the word
   it is read as names the same colour.
2. The model: the first `--prompts` validation clips asked for in held-out words (`evaluate.reworded_prompts`),
   sampled with the evaluate sampler twice, prompts as written and as read against the training captions' colour
   words (those of `--prepared`'s training split, as training records them); then the same clips in their own
   captions both ways, which reading must not change (every word there is a training word).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from layert2v.config import load_params
from layert2v.data.datamodule import training_captions
from layert2v.data.synthetic import BG_COLOURS, COLOURS, WORDS
from layert2v.evaluate import evaluate_pipeline, reworded_prompts, validation_prompts
from layert2v.models.colour_words import ColourWords, colour_names, known_colour_words, lexicon
from layert2v.pipeline import LayerT2VPipeline


def lexicon_name(word: str) -> str | None:
    """The lexicon's spelling of `word` ("off-white" -> "off white"), None where it has no such colour name."""
    spans = colour_names(word)
    return spans[0][2] if [span[:2] for span in spans] == [(0, len(word))] else None


def lexicon_table() -> None:
    """How each colour synonym is read against the training words of every list, each training word as if held
    out too (read against the others): the lexicon's hit rate on more words than the held-out ones (`*`)."""
    colours = [*COLOURS, *BG_COLOURS]
    training = {lexicon_name(w): name for name in colours for w in WORDS[name][:-1] if lexicon_name(w)}
    right = {"held-out": [0, 0], "training (each left out)": [0, 0]}
    for name in colours:
        cells = []
        for word in WORDS[name]:
            held, spelled = word == WORDS[name][-1], lexicon_name(word)
            if spelled is None:
                cells.append(f"{word}{'*' if held else ''}: not in the lexicon")
                continue
            read = ColourWords({w: list(lexicon()[w]) for w in training if w != spelled}).nearest(spelled)
            ok = training[read] == name
            tally = right["held-out" if held else "training (each left out)"]
            tally[0], tally[1] = tally[0] + ok, tally[1] + 1
            cells.append(f"{word}{'*' if held else ''} -> {read}{'' if ok else ' (wrong)'}")
        print(f"{name:>10}: " + "; ".join(cells))
    for kind, (ok, total) in right.items():
        print(f"{kind} words in the lexicon read as a word of their colour: {ok} / {total}")


def adherence(pipeline: LayerT2VPipeline, prompts: list, params, reader: ColourWords | None) -> dict[str, float]:
    pipeline.colour_words = reader
    size = (params.prepare.height, params.prepare.width)
    summary, _ = evaluate_pipeline(pipeline, prompts, params.evaluate, params.prepare.frames, size)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--prepared", type=Path, required=True)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--params", type=Path, default=Path(__file__).parents[1] / "params.yaml")
    args = parser.parse_args()
    lexicon_table()
    params = load_params(args.params)
    params = dataclasses.replace(params, evaluate=dataclasses.replace(params.evaluate, prompts=args.prompts))
    pipeline = LayerT2VPipeline.from_folder(args.model)
    reader = ColourWords(known_colour_words(training_captions(args.prepared)))
    own = validation_prompts(args.prepared, args.prompts, pipeline.cfg.max_fg)
    held = reworded_prompts(own)
    print(f"{len(reader.known)} colour words in the training captions; {len(held)} clips in held-out words")
    for name, prompts in (("held-out words", held), ("own captions", own)):
        for label, words in (("as written", None), ("read", reader)):
            s = adherence(pipeline, prompts, params, words)
            print(
                f"{name:>14} {label:>10}: colour {s['colour_adherence']:.0%}  shape {s['shape_adherence']:.0%}  "
                f"coherence {s['coherence_db']:.1f} dB"
            )


if __name__ == "__main__":
    main()
