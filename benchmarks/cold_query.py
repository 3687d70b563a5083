"""Cold-query benchmark: a fresh `pixdex search STORE "text" -k 10` process, fast text path vs transformers.

    python benchmarks/cold_query.py --quick      # shapes-clip and ViT-B/32 (random weights), 10 runs each
    python benchmarks/cold_query.py              # + ViT-L/14

For each model a small shapes collection is indexed (which also writes the model's fast text export into a
private cache, see indexer/text_onnx.py). Then, interleaved run by run so machine load hits both alike:
  - the whole-process wall-clock of the CLI text query with the fast path (default) and with the
    transformers path (PIXDEX_FAST=0), and their ratio; the two JSON outputs must rank alike;
  - the same for an image query with a new image (the vision tower's export), and the fast path's time
    for an image the store holds (answered from its stored vector: no model at all);
  - an `id:` query, `pixdex info`, `--help` and a bad argument;
  - the warm Searcher.search(text) latency on both paths (16-token query, in this process);
  - `pixdex serve`: seconds from start to the first answered /api/search, on both paths.
Each process is timed by wall-clock and by CPU time (user+sys, from getrusage): on a shared machine the
wall-clock also counts the wait for a core, the CPU time much less. `python -c pass` is the floor.
Prints Markdown tables; --json writes the figures. Not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
TEXT = "a red circle"
WARM_TEXT = "a photo of a small red circle next to a large blue square on the left"  # 16 tokens with BOS/EOS
TARGETS_S = {"shapes-clip": 0.5, "vit-b-32": 1.0, "vit-l-14": 1.5}


def env(fast: bool, cache: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PIXDEX_CACHE": str(cache),
            "PIXDEX_FAST": "1" if fast else "0", "TOKENIZERS_PARALLELISM": "false"}


def timed(argv: list[str], environ: dict) -> tuple[float, float, subprocess.CompletedProcess]:
    """(wall seconds, CPU seconds user+sys, result) of one fresh process. On a shared machine the CPU time
    shows the work a command does; the wall-clock also counts waiting for the cores."""
    cmd = [sys.executable, *argv] if argv[0] == "-c" else [sys.executable, "-m", "pixdex", *argv]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=environ, timeout=600)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), out


def ranking(stdout: str) -> list[int]:
    return [h["id"] for h in json.loads(stdout)[0]]


def prepare(name: str, work: Path, images: int, cache: Path) -> tuple[Path, str]:
    """A store of `images` shapes images indexed with the model (its ONNX exports written too)."""
    os.environ["PIXDEX_CACHE"] = str(cache)
    from indexer.job import index_collection
    from pixdex.demo.world import write_collection

    coll = work / "images"
    if not coll.exists():
        write_collection(coll, count=images, seed=1)
    model = "shapes-clip"
    if name != "shapes-clip":
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from archs import save_random

        model = str(work / "models" / name)
        if not Path(model, "config.json").exists():
            save_random(name, Path(model))
    store = work / f"{name}.pixdex"
    index_collection([str(coll)], store, model=model, progress=False)  # again: rewrites outdated exports
    return store, model


def cold(store: Path, runs: int, cache: Path, image: Path, stored: Path) -> dict:
    """p50/p90 seconds per command, fast path and transformers path interleaved."""
    cmds = {
        "text fast": (["search", str(store), TEXT, "-k", "10", "--json"], True),
        "text transformers": (["search", str(store), TEXT, "-k", "10", "--json"], False),
        "id: query": (["search", str(store), "id:3", "-k", "10", "--json"], True),
        "image fast": (["search", str(store), "--image", str(image), "-k", "10", "--json"], True),
        "image transformers": (["search", str(store), "--image", str(image), "-k", "10", "--json"], False),
        "stored image": (["search", str(store), "--image", str(stored), "-k", "10", "--json"], True),
        "info": (["info", str(store)], True),
        "--help": (["--help"], True),
        "bad argument": (["search", str(store), TEXT, "-k", "0"], True),
        "python -c pass": (["-c", "pass"], True),  # the machine's floor: interpreter start only
    }
    times: dict[str, list[float]] = {k: [] for k in cmds}
    cpu: dict[str, list[float]] = {k: [] for k in cmds}
    rankings: dict[str, list[int]] = {}
    failures: list[str] = []
    for _ in range(runs):
        for label, (argv, fast) in cmds.items():
            seconds, cpu_s, out = timed(argv, env(fast, cache))
            times[label].append(seconds)
            cpu[label].append(cpu_s)
            if label.startswith(("text", "image")) and out.returncode == 0:
                rankings[label] = ranking(out.stdout)
            elif label != "bad argument" and out.returncode != 0:
                failures.append(f"{label}: {out.stderr.strip()[-300:]}")
    res = {k: {"p50": float(np.median(v)), "p90": float(np.percentile(v, 90)),
               "cpu_p50": float(np.median(cpu[k]))}
           for k, v in times.items()}
    res["same_ranking"] = {kind: rankings.get(f"{kind} fast") == rankings.get(f"{kind} transformers")
                           for kind in ("text", "image")}
    res["failures"] = failures  # a failed run still counts its time; listed so it is not missed
    return res


def warm(store: Path, model: str, rounds: int = 60) -> dict:
    """Warm Searcher.search(text) latency, both paths interleaved, new text each round (no caching)."""
    from search.searcher import Searcher

    fast, slow = Searcher(store), Searcher(store, model=model)
    assert fast.text_encoder is not None, "no fast text export"
    ms: dict[str, list[float]] = {"fast": [], "transformers": []}
    for s in (fast, slow):
        s.search(WARM_TEXT, k=10)
    for i in range(rounds):
        text = f"{WARM_TEXT} {i}"
        for label, s in (("fast", fast), ("transformers", slow)):
            t0 = time.perf_counter()
            s.search(text, k=10)
            ms[label].append((time.perf_counter() - t0) * 1e3)
    return {k: float(np.median(v)) for k, v in ms.items()}


def serve_first_answer(store: Path, fast: bool, cache: Path) -> float:
    """Seconds from launching `pixdex serve` to the first 200 from /api/search."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/api/search?q=a+red+circle&k=10"
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "pixdex", "serve", str(store), "--port", str(port)],
                            env=env(fast, cache), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while time.perf_counter() - t0 < 120:
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    if r.status == 200:
                        return time.perf_counter() - t0
            except OSError:
                time.sleep(0.02)
        return float("nan")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="shapes-clip and vit-b-32 only")
    ap.add_argument("--models", help="comma-separated: shapes-clip,vit-b-32,vit-l-14")
    ap.add_argument("--runs", type=int, default=10, help="fresh processes per command (default 10)")
    ap.add_argument("--images", type=int, default=48, help="images per store (default 48)")
    ap.add_argument("--work", type=Path, help="working folder (default: a temporary one)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    models = (args.models.split(",") if args.models else
              ["shapes-clip", "vit-b-32"] + ([] if args.quick else ["vit-l-14"]))
    work = args.work or Path(tempfile.mkdtemp(prefix="pixdex-cold-"))
    cache = work / "cache"
    # an installed pixdex has bytecode (pip compiles on install); a checkout run with
    # PYTHONDONTWRITEBYTECODE=1 would otherwise compile ~40 modules in every process (~0.07 s)
    for package in ("indexer", "search", "classify", "pixdex"):
        compileall.compile_dir(str(ROOT / package), quiet=1)
    print(f"# cold query benchmark ({datetime.now(UTC):%Y-%m-%d}, "
          f"{platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; {args.runs} runs; work {work})\n")
    results = {}
    for name in models:
        store, model = prepare(name, work / name, args.images, cache)
        stored = min((work / name / "images").glob("*.png"))
        image = work / "new-query.png"  # an image the store does not hold: new bytes, encoded per query
        Image.open(stored).rotate(90).save(image)
        r = cold(store, args.runs, cache, image, stored)
        r["warm_ms"] = warm(store, model)
        r["serve_s"] = {"fast": serve_first_answer(store, True, cache),
                        "transformers": serve_first_answer(store, False, cache)}
        results[name] = r
        fast, slow = r["text fast"]["p50"], r["text transformers"]["p50"]
        print(f"## {name}\n")
        print("| command | wall p50 s | wall p90 s | CPU p50 s |\n|---|---|---|---|")
        for label in ("text fast", "text transformers", "image fast", "image transformers", "stored image",
                      "id: query",
                      "info", "--help", "bad argument", "python -c pass"):
            print(f"| {label} | {r[label]['p50']:.2f} | {r[label]['p90']:.2f} | {r[label]['cpu_p50']:.2f} |")
        cf, cs = r["text fast"]["cpu_p50"], r["text transformers"]["cpu_p50"]
        print(f"\ncold text query CPU time: fast {cf:.2f} s vs transformers {cs:.2f} s = {cs / cf:.1f}x less")
        print(f"cold text query: fast {fast:.2f} s vs transformers {slow:.2f} s = {slow / fast:.1f}x faster "
              f"(target <= {TARGETS_S.get(name, float('nan'))} s); same ranking: {r['same_ranking']['text']}")
        ifast, islow = r["image fast"]["p50"], r["image transformers"]["p50"]
        print(f"cold image query, new image: fast {ifast:.2f} s vs transformers {islow:.2f} s = "
              f"{islow / ifast:.1f}x faster "
              f"(target <= 0.5 s); same ranking: {r['same_ranking']['image']}")
        print(f"cold image query, an image the store holds: {r['stored image']['p50']:.2f} s "
              "(target <= 0.5 s)")
        print(f"warm Searcher.search(text) p50: fast {r['warm_ms']['fast']:.1f} ms, transformers "
              f"{r['warm_ms']['transformers']:.1f} ms "
              f"({r['warm_ms']['transformers'] / r['warm_ms']['fast']:.1f}x)")
        print(f"pixdex serve, start to first /api/search: fast {r['serve_s']['fast']:.2f} s, transformers "
              f"{r['serve_s']['transformers']:.2f} s", flush=True)
        for f in r["failures"]:
            print(f"FAILED run: {f}")
        print()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
