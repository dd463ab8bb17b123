"""The shape words of a prompt, for shape guidance (`pipeline.generate`'s `shape_guidance`).

At the CPU budget the DiT reads a prompt's shape word weakly: it moves a foreground's predicted matte by a few
percent where the colour word moves its colour by a factor of two to three (docs/results.md, "The model does not
read the shape word"). Classifier-free guidance against the null prompt amplifies everything the prompt says at
once, the colour most; contrasting each prompt with the same prompt with its shape words replaced by a neutral noun
isolates what the shape words add, so the sampler can follow that direction further.
"""

from __future__ import annotations

import functools
import re

NEUTRAL = "shape"  # what a shape word becomes: a noun the captions use for no one shape


@functools.cache
def _pattern() -> re.Pattern[str]:
    """Every word the data's captions and held-out prompts use for a shape (`synthetic.WORDS`), longest first so
    that "five-pointed star" goes as one."""
    from layert2v.data.synthetic import SHAPES, WORDS

    words = sorted({word for shape in SHAPES for word in WORDS[shape]}, key=len, reverse=True)
    return re.compile(r"\b(" + "|".join(re.escape(word) for word in words) + r")\b", re.IGNORECASE)


def without_shape_words(prompt: str) -> str:
    """`prompt` with each shape word replaced by "shape"; a prompt without one comes back unchanged."""
    return _pattern().sub(NEUTRAL, prompt)
