"""What a command's start costs: the package's text encoder, posterior and UniPC against the libraries they replace.

Run: `.venv/bin/python benchmarks/bench_startup.py [--passes 5] [--model <model folder> --out <empty folder>]`.
Each row runs in a fresh interpreter (imports are what is measured), the two sides of a row in turn, `passes` times;
a figure is the median of the seconds the work took inside the interpreter, torch already imported (every path
needs it). Rows:
1. the default text encoder loaded and one prompt encoded: the package's BERT on `tokenizers` / transformers'
   tokenizer and `AutoModel` (the same numbers: tests/test_text.py);
2. the patch autoencoder's posterior class imported: `layert2v.models.vae` / diffusers' module;
3. 20 UniPC steps on a small latent with a stand-in velocity: `layert2v.sampling` / diffusers' scheduler (the same
   numbers: tests/test_model.py);
With `--model`, also the whole `layert2v generate` command (K = 3, torch) from the shell, seconds of wall time.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from layert2v.hostcache import cpu_model

TIMED = "import time, torch\nstart = time.perf_counter()\n{work}\nprint(time.perf_counter() - start)\n"
FIELD = "lambda x, t: torch.tanh(x) * (1 + t.view(-1, 1, 1, 1, 1)) - x / 3"
ROWS = {
    "text encoder: load + encode": (
        "from layert2v.models.text import TextEncoder\nTextEncoder(max_tokens=64, pooled=True).encode(['a red star'])",
        "from layert2v.models.text import TextEncoder\n"
        "TextEncoder(max_tokens=64, pooled=True, transformers=True).encode(['a red star'])",
    ),
    "posterior class: import": (
        "from layert2v.models.vae import Posterior",
        "from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution",
    ),
    "UniPC, 20 steps: import + run": (
        f"from layert2v.sampling import unipc_sample\nunipc_sample({FIELD}, torch.randn(1, 16, 3, 8, 8), 20)",
        "from diffusers import UniPCMultistepScheduler\n"
        "s = UniPCMultistepScheduler(num_train_timesteps=1000, prediction_type='flow_prediction', use_flow_sigmas=True,"
        " flow_shift=3.0)\n"
        f"s.set_timesteps(20)\nx = torch.randn(1, 16, 3, 8, 8)\nfield = {FIELD}\n"
        "for step, sigma in zip(s.timesteps, s.sigmas):\n"
        "    x = s.step(field(x, torch.full((1,), float(sigma))), step, x).prev_sample",
    ),
}


def seconds_inside(work: str) -> float:
    done = subprocess.run([sys.executable, "-c", TIMED.format(work=work)], capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def generate_seconds(model: Path, out: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    command = [
        str(Path(sys.executable).parent / "layert2v"), "generate", "a red circle and a blue star over navy stripes",
        "--background", "navy stripes", "--foreground", "a red circle", "--foreground", "a blue star",
        "--foreground", "a green square", "--model", str(model), "--backend", "torch", "--out", str(out),
    ]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(command, capture_output=True, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--model", type=Path, default=None, help="a model folder: also time `layert2v generate`")
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench_startup_generate"))
    args = parser.parse_args()
    print(f"CPU: {cpu_model()}; medians of {args.passes} fresh interpreters per cell, torch imported first")
    print("| work | the package | the library | library / package |")
    print("|---|---|---|---|")
    for name, (ours, library) in ROWS.items():
        times: dict[str, list[float]] = {"ours": [], "library": []}
        for _ in range(args.passes):
            times["ours"].append(seconds_inside(ours))
            times["library"].append(seconds_inside(library))
        mine, theirs = statistics.median(times["ours"]), statistics.median(times["library"])
        print(f"| {name} | {mine:.2f} s | {theirs:.2f} s | {theirs / mine:.1f}x |", flush=True)
    if args.model is not None:
        runs = [generate_seconds(args.model, args.out) for _ in range(args.passes)]
        print(
            f"\n`layert2v generate` (K = 3, torch, 20 steps), wall: median {statistics.median(runs):.2f} s "
            f"({', '.join(f'{r:.2f}' for r in runs)})"
        )


if __name__ == "__main__":
    main()
