"""Colour words a model never read, read as the nearest colour word it did.

A DiT conditioned on a small sentence encoder follows the colour words of its training captions, but not other
colour words for the same colours: all-MiniLM-L6-v2 places "crimson" nearest "purple" and "sapphire" nearest
"green", so the best read-out of its embedding gets a held-out colour word right a third of the time
(docs/results.md, "Prompts in a user's words"). What the encoder lacks is what a colour name means in colour, and
that is public data: the xkcd colour survey's 949 names and the 148 CSS colour names, as matplotlib ships them.

A model folder records the colour words of its training captions with their colours (`known_colour_words`,
written at training time); `ColourWords.read` replaces every other colour word of a prompt with the known word
nearest it in colour (CIEDE2000). A word the captions used is never replaced, so prompts in the training words are
read as written; a word neither list has is left as it is.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from layert2v.models.checkpoint import CONFIG, ModelFolderError, read_config

MAX_WORDS = 3  # the longest colour name matched, in words ("very light blue")
_WORD = re.compile(r"[a-z]+")
_JOINER = re.compile(r"[ -]")  # what may stand between the words of one colour name ("off-white", "slate grey")


def _hex_rgb(code: str) -> tuple[float, float, float]:
    code = code.lstrip("#")
    return tuple(int(code[i : i + 2], 16) / 255 for i in (0, 2, 4))  # type: ignore[return-value]


def _name(words: Iterable[str]) -> str:
    """One spelling per colour name: lower case, single spaces, British "grey"."""
    return " ".join("grey" if w == "gray" else w for w in words)


@functools.cache
def lexicon() -> dict[str, tuple[float, float, float]]:
    """Colour name -> sRGB in [0, 1]: the xkcd survey's names, then the CSS names it lacks (matplotlib's tables;
    imported on first use, 0.2 s, not at package import: only prompts read against a model folder's words need
    them)."""
    from matplotlib.colors import CSS4_COLORS, XKCD_COLORS

    names: dict[str, tuple[float, float, float]] = {}
    for key, code in XKCD_COLORS.items():
        words = _WORD.findall(key.removeprefix("xkcd:").lower())
        if words[0] != "medium":  # a size in a prompt: "a medium purple star" is a purple star of medium size
            names.setdefault(_name(words), _hex_rgb(code))
    for key, code in CSS4_COLORS.items():
        names.setdefault(_name([key.lower()]), _hex_rgb(code))
    return names


def cielab(rgb: np.ndarray) -> np.ndarray:
    """sRGB `[..., 3]` in [0, 1] -> CIELAB (D65), the space `ciede2000` measures differences in."""
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = linear @ np.array([[0.4124, 0.2126, 0.0193], [0.3576, 0.7152, 0.1192], [0.1805, 0.0722, 0.9505]])
    xyz = xyz / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def ciede2000(lab1: np.ndarray, lab2: np.ndarray) -> np.ndarray:
    """CIEDE2000 colour difference of CIELAB colours `[..., 3]` (CIE 142-2001). Plain Euclidean distance in CIELAB
    (CIE76) overstates differences among saturated blues and purples: read against the others, 28 of the 40
    training colour words landed on their own colour with it, 34 with this (benchmarks/colour_words.py)."""
    (l1, a1, b1), (l2, a2, b2) = np.moveaxis(lab1, -1, 0), np.moveaxis(lab2, -1, 0)
    chroma = (np.hypot(a1, b1) + np.hypot(a2, b2)) / 2
    g = 0.5 * (1 - np.sqrt(chroma**7 / (chroma**7 + 25.0**7)))
    a1, a2 = (1 + g) * a1, (1 + g) * a2
    c1, c2 = np.hypot(a1, b1), np.hypot(a2, b2)
    h1, h2 = np.degrees(np.arctan2(b1, a1)) % 360, np.degrees(np.arctan2(b2, a2)) % 360
    grey = c1 * c2 == 0
    dh = h2 - h1
    dh = np.where(grey, 0, np.where(dh > 180, dh - 360, np.where(dh < -180, dh + 360, dh)))
    big_h = 2 * np.sqrt(c1 * c2) * np.sin(np.radians(dh / 2))
    mean_l, mean_c, sum_h = (l1 + l2) / 2, (c1 + c2) / 2, h1 + h2
    mean_h = np.where(np.abs(h1 - h2) > 180, np.where(sum_h < 360, sum_h + 360, sum_h - 360), sum_h) / 2
    mean_h = np.where(grey, sum_h, mean_h)
    t = (
        1
        - 0.17 * np.cos(np.radians(mean_h - 30))
        + 0.24 * np.cos(np.radians(2 * mean_h))
        + 0.32 * np.cos(np.radians(3 * mean_h + 6))
        - 0.20 * np.cos(np.radians(4 * mean_h - 63))
    )
    rotation = (
        -np.sin(np.radians(60 * np.exp(-(((mean_h - 275) / 25) ** 2)))) * 2 * np.sqrt(mean_c**7 / (mean_c**7 + 25.0**7))
    )
    s_l = 1 + 0.015 * (mean_l - 50) ** 2 / np.sqrt(20 + (mean_l - 50) ** 2)
    s_c, s_h = 1 + 0.045 * mean_c, 1 + 0.015 * mean_c * t
    dl, dc, dh = (l2 - l1) / s_l, (c2 - c1) / s_c, big_h / s_h
    return np.sqrt(dl**2 + dc**2 + dh**2 + rotation * dc * dh)


def colour_names(text: str) -> list[tuple[int, int, str]]:
    """The lexicon's colour names in `text`, longest first at each word: (start, end, name) spans."""
    words = list(_WORD.finditer(text.lower()))
    spans, i = [], 0
    while i < len(words):
        for n in range(min(MAX_WORDS, len(words) - i), 0, -1):
            run = words[i : i + n]
            joined = all(_JOINER.fullmatch(text[a.end() : b.start()]) for a, b in itertools.pairwise(run))
            name = _name(w.group() for w in run)
            if joined and name in lexicon():
                spans.append((run[0].start(), run[-1].end(), name))
                i += n
                break
        else:
            i += 1
    return spans


def known_colour_words(captions: Iterable[str]) -> dict[str, list[float]]:
    """The colour names the captions use, with their colours: what a model trained on them has read."""
    return {name: list(lexicon()[name]) for text in captions for _, _, name in colour_names(text)}


class ColourWords:
    """Reads a prompt's colour words against the ones a model knows (`known`: name -> sRGB, from its folder)."""

    def __init__(self, known: dict[str, list[float]]) -> None:
        if not known:
            raise ValueError("colour_words: a model folder's list of known colour words is empty")
        self.known = {name: list(rgb) for name, rgb in known.items()}
        self.names = sorted(known)
        self.lab = cielab(np.asarray([known[n] for n in self.names], np.float64))

    def nearest(self, name: str) -> str:
        """The known colour word nearest the lexicon's colour `name`."""
        distance = ciede2000(self.lab, cielab(np.asarray(lexicon()[name], np.float64)))
        return self.names[int(distance.argmin())]

    def read(self, text: str) -> str:
        """`text` with each colour word the model does not know replaced by the nearest one it knows."""
        out, last = [], 0
        for start, end, name in colour_names(text):
            if name not in self.known:
                word = self.nearest(name)
                word = word.capitalize() if text[start].isupper() else word  # "Crimson stars" -> "Scarlet stars"
                out += [_article(text[last:start], word), word]
                last = end
        return "".join(out) + text[last:]


def _article(before: str, word: str) -> str:
    """`before` with a closing indefinite article agreeing with `word` ("a pumpkin" -> "an orange")."""
    article = "an" if word[0] in "aeiou" else "a"
    return re.sub(r"\b([Aa])n? $", lambda m: m.group(1) + article[1:] + " ", before)


def folder_colour_words(folder: Path | str) -> ColourWords | None:
    """How a model folder's model reads a prompt's colour words: against those its training captions used
    (`config.json`'s `colour_words`, written by `checkpoint.save_pipeline`), or as written (None) for folders from
    before they were recorded."""
    known = read_config(folder).get("colour_words")
    if known is None:
        return None
    path = Path(folder) / CONFIG
    if not (
        isinstance(known, dict)
        and all(
            isinstance(v, list) and len(v) == 3 and all(isinstance(x, int | float) for x in v) for v in known.values()
        )
    ):
        raise ModelFolderError(f"{path}: colour_words must map each colour word to its sRGB [r, g, b]")
    try:
        return ColourWords(known)
    except ValueError as err:
        raise ModelFolderError(f"{path}: {err}") from err
