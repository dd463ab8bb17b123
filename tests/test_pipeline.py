"""LayerT2VPipeline on the tiny preset: save/load with safetensors, seeded determinism, shapes, bad requests."""

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from layert2v import hostcache
from layert2v.config import model_preset
from layert2v.models.dit import LayerDiT
from layert2v.models.text import load_text_encoder
from layert2v.pipeline import LayerT2VPipeline
from layert2v.training.objective import drop_prompts

CFG = model_preset("tiny")
REQUEST = {"frames": 5, "height": 32, "width": 32, "steps": 2, "guidance": 3.0}


@pytest.fixture(scope="module")
def pipeline(tiny_model: Path) -> LayerT2VPipeline:
    return LayerT2VPipeline.from_folder(tiny_model)


def test_generate_is_seeded_and_layered(pipeline: LayerT2VPipeline) -> None:
    args = ("a red circle over stripes", "navy stripes with a still camera", ["a red circle", "a blue star"])
    first = pipeline.generate(*args, seed=1, **REQUEST)
    again = pipeline.generate(*args, seed=1, **REQUEST)
    other = pipeline.generate(*args, seed=2, **REQUEST)
    assert np.array_equal(first.full, again.full) and np.array_equal(first.alphas[1], again.alphas[1])
    assert not np.array_equal(first.full, other.full)
    assert first.full.shape == (5, 32, 32, 3) and first.background.shape == (5, 32, 32, 3)
    assert len(first.foregrounds) == len(first.alphas) == 2 and first.alphas[0].shape == (5, 32, 32)
    for fg, alpha in zip(first.foregrounds, first.alphas, strict=True):
        assert alpha.min() >= 0 and alpha.max() <= 1 and (fg <= alpha[..., None] + 1e-6).all()  # premultiplied


def test_sampler_choice_and_guidance_one(pipeline: LayerT2VPipeline) -> None:
    args = ("a green square", "a grey wall", ["a green square"])
    euler = pipeline.generate(*args, sampler="euler", **REQUEST)
    unipc = pipeline.generate(*args, sampler="unipc", **REQUEST)
    assert euler.full.shape == unipc.full.shape
    plain = pipeline.generate(*args, **{**REQUEST, "guidance": 1.0})
    assert plain.full.shape == (5, 32, 32, 3)


def test_guidance_contrasts_with_the_null_prompt_that_training_drops_to(
    pipeline: LayerT2VPipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = ("a green square", "a grey wall", ["a green square"])
    seen = []
    forward = pipeline.dit.forward_layout
    monkeypatch.setattr(pipeline.dit, "forward_layout", lambda *a: seen.append(a[2:4]) or forward(*a))
    pipeline.generate(*args, **REQUEST)
    text, mask = seen[0]  # both guidance branches in one batch: conditional, then unconditional
    cond_text, cond_mask = pipeline.encode_prompts([args[0], args[1], *args[2]])
    assert torch.equal(text[:1], cond_text) and torch.equal(mask[:1], cond_mask)
    dropped_text, dropped_mask = drop_prompts(cond_text.unflatten(1, (3, -1)), cond_mask, p=1.0)
    assert torch.equal(text[1:], dropped_text.flatten(1, 2)) and torch.equal(mask[1:], dropped_mask)
    assert not text[1:].any() and mask[1].sum() == 3  # zero states, one visible token per prompt slot
    seen.clear()
    pipeline.generate(*args, negative_prompt="blurry", **REQUEST)
    assert torch.equal(seen[0][0][1:], pipeline.encode_prompts(["blurry"] * 3)[0])


def test_shape_guidance_contrasts_with_the_prompts_shape_words_made_neutral(
    pipeline: LayerT2VPipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = []
    forward = pipeline.dit.forward_layout
    monkeypatch.setattr(pipeline.dit, "forward_layout", lambda *a: seen.append(a[2]) or forward(*a))
    request = {**REQUEST, "guidance_sigma": 0.0, "guidance_every": 1}  # both branches on both steps

    def run(args: tuple, weight: float):
        seen.clear()
        return pipeline.generate(*args, shape_guidance=weight, **request), len(seen)

    star = ("a red star over stripes", "navy stripes", ["a red five-pointed star"])
    (shaped, calls), (plain, plain_calls) = run(star, 3.0), run(star, 0.0)
    assert calls == 2 * plain_calls  # one more batch of 1 on each guided step
    assert not np.array_equal(shaped.alphas[0], plain.alphas[0])
    run(star, 3.0)
    neutral = ["a red shape over stripes", "navy stripes", "a red shape"]
    assert torch.equal(seen[1], pipeline.encode_prompts(pipeline.read_prompts(neutral))[0])
    blob = ("a red blob over stripes", "navy stripes", ["a red blob"])  # no shape word: nothing to contrast
    (with_weight, calls), (without, plain_calls) = run(blob, 3.0), run(blob, 0.0)
    assert calls == plain_calls and np.array_equal(with_weight.full, without.full)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"frames": 6}, "4k\\+1"),
        ({"height": 40}, "height must be a multiple of 16"),
        ({"frames": 10001}, "frames must be <= 33"),
        ({"width": 100000}, "width must be <= 256"),
        ({"steps": 0}, "steps"),
        ({"guidance": 0.5}, "guidance"),
        ({"composite_guidance": 1.5}, r"composite_guidance must be in \[0, 1\], got 1.5"),
        ({"composite_guidance": -0.1}, r"composite_guidance must be in \[0, 1\]"),
        ({"composite_sigma": 0.0}, r"composite_sigma must be in \(0, 1\], got 0.0"),
        ({"guidance_sigma": 1.0}, r"guidance_sigma must be in \[0, 1\), got 1.0"),
        ({"guidance_every": 0}, r"guidance_every must be in 1..200, got 0"),
        ({"shape_guidance": -1.0}, r"shape_guidance must be in \[0, 50\], got -1.0"),
        ({"foreground_prompts": []}, "foreground prompts allowed"),
        ({"foreground_prompts": ["a", "b", "c", "d"]}, "foreground prompts allowed"),
        ({"background_prompt": " "}, "background_prompt must be a non-empty string"),
    ],
)
def test_bad_requests_are_named(pipeline: LayerT2VPipeline, change: dict, message: str) -> None:
    request = {"prompt": "p", "background_prompt": "b", "foreground_prompts": ["f"], **REQUEST, **change}
    with pytest.raises(ValueError, match=message):
        pipeline.generate(**request)


def test_missing_weights_and_unknown_backend(tmp_path: Path, pipeline: LayerT2VPipeline) -> None:
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        LayerT2VPipeline.from_folder(tmp_path)
    with pytest.raises(ValueError, match="'tensorrt' needs an exported denoiser"):
        LayerT2VPipeline(pipeline.dit, pipeline.vae, pipeline.text_encoder, backend="tensorrt")
    with pytest.raises(ValueError, match="unknown backend 'jax'"):
        LayerT2VPipeline.from_folder(pipeline.save(tmp_path / "m"), backend="jax")


def test_model_folder_keeps_dit_and_vae_sizes_apart(tmp_path: Path, pipeline: LayerT2VPipeline) -> None:
    """A DiT trained on 24-token text with a tiny VAE reloads with 24 tokens, not the VAE preset's 16."""
    dit = LayerDiT(model_preset("tiny", text_len=24))
    folder = LayerT2VPipeline(dit, pipeline.vae, load_text_encoder(None, 24)).save(tmp_path / "m")
    loaded = LayerT2VPipeline.from_folder(folder)
    assert loaded.cfg.text_len == 24 and loaded.text_encoder.max_tokens == 24 and loaded.vae.cfg.text_len == 16


def test_pooled_prompts_put_the_sentence_embedding_first_and_the_folder_remembers(
    tmp_path: Path, pipeline: LayerT2VPipeline
) -> None:
    plain, pooled = load_text_encoder(None, 16), load_text_encoder(None, 16, pooled=True)
    texts = ["a crimson star moving left", "a red star moving left", "a blue square over navy stripes"]
    (states, mask), (pooled_states, _) = plain.encode(texts), pooled.encode(texts)
    mean = (states * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    assert np.allclose(pooled_states[:, 0], mean, atol=1e-5) and np.array_equal(pooled_states[:, 1:], states[:, 1:])
    cosine = lambda a, b: float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))  # noqa: E731
    assert cosine(mean[0], mean[1]) > cosine(mean[0], mean[2])  # meaning: a synonym is nearer than another object
    dit = LayerDiT(model_preset("tiny", text_pooled=True))
    folder = LayerT2VPipeline(dit, pipeline.vae, pooled).save(tmp_path / "m")
    assert LayerT2VPipeline.from_folder(folder).text_encoder.pooled
    with pytest.raises(ValueError, match=r"pooled False\) does not match the model .* pooled True\)"):
        LayerT2VPipeline(dit, pipeline.vae, plain)


def test_bf16_runs_the_torch_dit_under_autocast_close_to_fp32(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    request = {"frames": 5, "height": 32, "width": 32, "steps": 2, "guidance": 3.0, "seed": 1}
    want = LayerT2VPipeline.from_folder(tiny_model).generate("a red circle", "stripes", ["a red circle"], **request)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        half = LayerT2VPipeline.from_folder(tiny_model, precision="bf16")
    slow = [w for w in caught if issubclass(w.category, hostcache.SlowPrecision)]
    assert len(slow) == (0 if hostcache.native_bf16() else 1)  # this host's own kernels decide
    seen = []
    forward = half.dit.forward_layout

    def recording(*args, **kwargs):
        seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return forward(*args, **kwargs)

    monkeypatch.setattr(half.dit, "forward_layout", recording)
    got = half.generate("a red circle", "stripes", ["a red circle"], **request)
    assert seen and set(seen) == {torch.bfloat16} and got.full.dtype == want.full.dtype
    assert 0 < np.abs(got.full - want.full).max() < 0.1  # bf16 rounding: close, not exact
    with pytest.raises(ValueError, match=r"the torch backend runs in fp32 or bf16, not 'fp16'"):
        LayerT2VPipeline.from_folder(tiny_model, precision="fp16")


def test_compile_backend_generates_what_torch_generates(tiny_model: Path) -> None:
    request = {"frames": 5, "height": 32, "width": 32, "steps": 2, "guidance": 3.0, "seed": 1}
    want = LayerT2VPipeline.from_folder(tiny_model).generate("a red circle", "stripes", ["a red circle"], **request)
    compiled = LayerT2VPipeline.from_folder(tiny_model, backend="compile")
    got = compiled.generate("a red circle", "stripes", ["a red circle"], **request)
    assert np.abs(got.full - want.full).max() < 1e-4 and np.abs(got.alphas[0] - want.alphas[0]).max() < 1e-4
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    compiled.generate("a red circle", "stripes", ["a big red circle slowly moving to the left"], **request)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs  # one graph for every prompt length


def test_generating_from_a_patch_model_imports_neither_transformers_nor_diffusers(tiny_model: Path) -> None:
    """Loading a CPU-preset model and sampling with UniPC runs on the package's own BERT, posterior and sampler:
    transformers and diffusers' imports took 6 of the 10 s a `layert2v generate` spent (docs/results.md)."""
    code = (
        "import sys\n"
        "from layert2v.pipeline import LayerT2VPipeline\n"
        f"pipe = LayerT2VPipeline.from_folder({str(tiny_model)!r})\n"
        f"pipe.generate('a red circle', 'a grey wall', ['a red circle'], **{REQUEST!r})\n"
        "loaded = sorted({name.split('.')[0] for name in sys.modules} & {'transformers', 'diffusers', 'peft'})\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
