"""The service under load, against calling the pipeline directly, side by side in one run.

Starts `layert2v serve --model MODEL` on a loopback port, then:
1. direct: `LayerT2VPipeline.generate` in this process (and generate + writing the layer files, which a job
   also does), median of `--repeats`;
2. service, one client: submit a K = 1 generation, poll until finished; median end-to-end latency;
   and the job alone (claimed to finished, from the job record), without the client's polling;
3. service, `--clients` concurrent clients each submitting `--jobs` generations: p50 / p95 latency, throughput,
   HTTP errors other than the designed 429s (a client that gets 429 waits its Retry-After and submits again).
Overhead = service latency at one client / direct generate + write - 1. Prints a table and the CPU model.

    python benchmarks/bench_serve.py --model artifacts/train/stage3/model --clients 4 --jobs 3
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from layert2v.hostcache import cpu_model

ROOT = Path(__file__).resolve().parents[1]
REQUEST = {
    "prompt": "a red circle moving right on green grass",
    "background_prompt": "green grass",
    "foreground_prompts": ["a red circle"],
    "frames": 9,
    "height": 64,
    "width": 64,
    "steps": 20,
}


def direct(model: Path, repeats: int) -> tuple[float, float]:
    """Median seconds of generate alone, and of generate + writing the files a job writes."""
    from layert2v.compose import FORMATS
    from layert2v.pipeline import LayerT2VPipeline
    from layert2v.serving.worker import write_job_files

    pipeline = LayerT2VPipeline.from_folder(model)
    fields = {k: v for k, v in REQUEST.items() if k not in ("prompt", "background_prompt", "foreground_prompts")}
    args = (REQUEST["prompt"], REQUEST["background_prompt"], REQUEST["foreground_prompts"])
    pipeline.generate(*args, **fields)  # warm-up
    alone, written = [], []
    for seed in range(repeats):
        start = time.perf_counter()
        video = pipeline.generate(*args, **fields, seed=seed)
        alone.append(time.perf_counter() - start)
        with tempfile.TemporaryDirectory() as folder:
            write_job_files(Path(folder), video, FORMATS, {"prompts": [*args[:2], *args[2]]})
        written.append(time.perf_counter() - start)
    return statistics.median(alone), statistics.median(written)


def one_job(client: httpx.Client, seed: int, errors: list[str], throttled: list[int], runs: list | None = None):
    start = time.perf_counter()
    while True:
        response = client.post("/v1/generations", json=REQUEST | {"seed": seed})
        if response.status_code != 429:
            break
        throttled.append(1)
        time.sleep(float(response.headers.get("Retry-After", "1")))
    if response.status_code != 202:
        errors.append(f"POST {response.status_code}")
        return None
    job_id = response.json()["id"]
    while True:
        job = client.get(f"/v1/generations/{job_id}").json()
        if job["state"] in ("finished", "failed"):
            break
        time.sleep(0.05)
    if job["state"] != "finished" or client.get(job["links"]["bundle"]).status_code != 200:
        errors.append(f"job {job['state']}: {job.get('error')}")
        return None
    if runs is not None:
        runs.append(job["finished"] - job["started"])
    return time.perf_counter() - start


def load(url: str, clients: int, jobs: int) -> dict[str, float]:
    latencies: list[float] = []
    errors: list[str] = []
    throttled: list[int] = []

    def client_loop(index: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            for j in range(jobs):
                seconds = one_job(client, 1000 * index + j, errors, throttled)
                if seconds is not None:
                    latencies.append(seconds)

    start = time.perf_counter()
    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    return {
        "p50": float(np.percentile(latencies, 50)) if latencies else float("nan"),
        "p95": float(np.percentile(latencies, 95)) if latencies else float("nan"),
        "throughput": len(latencies) / wall,
        "errors": len(errors),
        "throttled": len(throttled),
        "done": len(latencies),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="a model folder")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=3, help="jobs per client")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--port", type=int, default=8791)
    args = parser.parse_args()

    direct_alone, direct_written = direct(args.model, args.repeats)
    with tempfile.TemporaryDirectory() as out:
        log = open(Path(out) / "serve.log", "wb")  # noqa: SIM115 (lives as long as the server)
        server = subprocess.Popen(
            [sys.executable, "-m", "layert2v.cli", "serve", "--params", str(ROOT / "params.yaml"), "--model",
             str(args.model), "--out", out, "--port", str(args.port)],
            cwd=ROOT, stdout=log, stderr=log,
        )  # fmt: skip
        url = f"http://127.0.0.1:{args.port}"
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    if httpx.get(f"{url}/readyz").status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.5)
            with httpx.Client(base_url=url, timeout=60) as client:
                one_job(client, 0, [], [])  # warm-up
                runs: list[float] = []
                single = [one_job(client, seed, [], [], runs) for seed in range(args.repeats)]
            loaded = load(url, args.clients, args.jobs)
        finally:
            server.terminate()
            server.wait(60)
    service_single = statistics.median(s for s in single if s is not None)
    print(f"CPU: {cpu_model()}; model {args.model}; K = 1, {REQUEST['frames']} x {REQUEST['height']}^2, "
          f"{REQUEST['steps']} steps; medians of {args.repeats}")  # fmt: skip
    print("| measure | seconds |\n|---|---|")
    print(f"| direct generate | {direct_alone:.3f} |")
    print(f"| direct generate + write files | {direct_written:.3f} |")
    print(f"| service, 1 client, submit to finished | {service_single:.3f} |")
    print(f"| service, the job alone (claimed to finished) | {statistics.median(runs):.3f} |")
    print(
        f"| overhead end to end (service / direct generate + write - 1) | {service_single / direct_written - 1:+.1%} |"
    )
    print(f"| overhead of the job alone | {statistics.median(runs) / direct_written - 1:+.1%} |")
    print(f"\n{args.clients} clients x {args.jobs} jobs: p50 {loaded['p50']:.2f} s, p95 {loaded['p95']:.2f} s, "
          f"{loaded['throughput']:.2f} jobs/s, {loaded['done']} done, {loaded['errors']} errors, "
          f"{loaded['throttled']} designed 429s")  # fmt: skip


if __name__ == "__main__":
    main()
