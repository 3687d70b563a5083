"""Search latency benchmark: text encoding vs index search, p50/p95 and recall@10, per index type.

    python benchmarks/search_latency.py --quick      # 100k vectors (a few minutes)
    python benchmarks/search_latency.py              # 100k and 1M vectors (long: builds every index at 1M)

For each size N, synthetic 512-d unit vectors drawn from a Gaussian mixture with a low intrinsic
dimension (clustered like real embeddings, not uniform noise) are written to a pixdex store once;
each index type gets a hard-linked copy with its own index, built and tuned by the indexer
(`update_index`, target recall@10 0.95). On the same vectors and queries it measures:

  - numpy brute force (float32 matrix in RAM, argpartition),
  - `datasets` add_faiss_index (Flat, inner product) + get_nearest_examples,
  - per index: the raw FAISS search at the manifest's parameters, and Searcher.search_embedding
    (FAISS + exact re-scoring + paths), each with recall@10 against exact search,
  - opening the store in a fresh process and answering the first query,
  - ViT-B/32 text-tower encoding (random weights, CLIPConfig defaults) through indexer.Encoder.

Queries are fresh draws from the mixture (not stored vectors), one at a time (batch 1); raw FAISS and the
warm Searcher are timed interleaved over 3 rounds, so load from other processes hits both alike. FAISS calls
run with one OpenMP thread per query (the Searcher's policy; datasets gets the same for fairness);
numpy uses its BLAS defaults.
Results print as Markdown tables; --json writes them too. Not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from search.candidates import faiss_threads as _faiss_threads
from search.encoding import torch_threads as _torch_threads

DIM = 512
LATENT = 64
CLUSTERS = 1000
SPREAD = 0.8  # within-cluster spread in the latent space (clusters overlap: IVF is not trivially exact)
NOISE = 0.2  # isotropic noise in the 512-d space
TARGETS = {"index_p50_ms_at_1m": 5.0, "recall_at_10": 0.95, "text_p50_ms": 30.0, "open_first_query_s": 2.0}


# ---- data ---------------------------------------------------------------------------------------
class Mixture:
    """Unit vectors: a Gaussian mixture in a 64-d latent space, mapped linearly to 512-d, plus noise."""

    def __init__(self, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.centres = rng.normal(size=(CLUSTERS, LATENT)).astype(np.float32)
        self.proj = (rng.normal(size=(LATENT, DIM)) / np.sqrt(LATENT)).astype(np.float32)

    def sample(self, n: int, seed: int, chunk: int = 100_000) -> np.ndarray:
        rng = np.random.default_rng(seed)
        out = np.empty((n, DIM), np.float32)
        for s in range(0, n, chunk):
            m = min(chunk, n - s)
            z = (self.centres[rng.integers(0, CLUSTERS, m)]
                 + SPREAD * rng.standard_normal((m, LATENT), np.float32))
            x = z @ self.proj + NOISE * rng.standard_normal((m, DIM), np.float32)
            out[s:s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
        return out


def neighbour_stats(x: np.ndarray, sample: int = 200) -> dict:
    """Median cosine to the 1st and 10th nearest neighbour and to a random item (describes the data)."""
    sims = np.sort(x[:sample] @ x.T, axis=1)[:, ::-1]
    return {"nn1_cos": float(np.median(sims[:, 1])), "nn10_cos": float(np.median(sims[:, 10])),
            "random_pair_cos": float(np.median(sims[:, len(x) // 2]))}


def exact_truth(x: np.ndarray, q: np.ndarray, k: int = 10) -> np.ndarray:
    import faiss

    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    return index.search(q, k)[1]


def recall(found: list[list[int]] | np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(map(int, f)) & set(map(int, t))) / len(t) for f, t in zip(found, truth)]))


def timed(fn, queries, warmup: int = 5) -> tuple[list, np.ndarray]:
    """Run fn(q) per query; (results, per-query milliseconds)."""
    for q in queries[:warmup]:
        fn(q)
    out, ms = [], []
    for q in queries:
        t0 = time.perf_counter()
        out.append(fn(q))
        ms.append((time.perf_counter() - t0) * 1e3)
    return out, np.array(ms)


def interleaved(fns: dict, queries, rounds: int = 3, warmup: int = 5) -> dict:
    """Time several methods query by query, alternating their order, over a few rounds, so that the
    load from other processes on a shared machine falls on all of them alike. {name: (results, ms)}."""
    for fn in fns.values():
        for q in queries[:warmup]:
            fn(q)
    results = {name: [] for name in fns}
    ms = {name: [] for name in fns}
    names = list(fns)
    for r in range(rounds):
        for i, q in enumerate(queries):
            for name in (names if (i + r) % 2 == 0 else names[::-1]):
                t0 = time.perf_counter()
                out = fns[name](q)
                ms[name].append((time.perf_counter() - t0) * 1e3)
                if r == 0:
                    results[name].append(out)
    return {name: (results[name], np.array(ms[name])) for name in fns}


def pct(ms: np.ndarray) -> tuple[float, float]:
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 95))


# ---- stores -------------------------------------------------------------------------------------
def write_base_store(path: Path, x: np.ndarray, info) -> Path:
    """A store holding x (no index) made with model `info`, written the way the index job writes it."""
    from indexer.store import StoreWriter

    if path.exists():
        shutil.rmtree(path)
    with StoreWriter(path, info) as w:
        step = w.shard_rows  # the index job's default shard size (4096 rows)
        for s in range(0, len(x), step):
            block = x[s:s + step]
            rows = [{"path": f"/bench/{i:08d}.jpg", "bytes": 0, "mtime": 0.0, "width": 224, "height": 224,
                     "sha256": ""} for i in range(s, s + len(block))]
            w.append(rows, block)
        w.commit()
    return path


def store_with_index(base: Path, path: Path, kind: str) -> tuple[Path, dict]:
    """A hard-linked copy of base with a freshly built and tuned index of the given kind."""
    from indexer.index_build import update_index
    from indexer.store import StoreWriter

    if path.exists():
        shutil.rmtree(path)
    shutil.copytree(base, path, copy_function=os.link)
    with StoreWriter(path) as w:
        record = update_index(w, kind, log=lambda m: print("   ", m, flush=True))
    return path, record


OPEN_SCRIPT = """
import sys, time, numpy as np
t0 = time.perf_counter()
from search.searcher import Searcher
t1 = time.perf_counter()
s = Searcher(sys.argv[1])
hits = (s.search_embedding(np.load(sys.argv[2]), k=10) if sys.argv[3] == "embedding"
        else s.search(sys.argv[3], k=10))
t2 = time.perf_counter()
print(f"{t1 - t0:.4f} {t2 - t1:.4f} {len(hits)}")
"""
FIRST_TEXT = "a photo of a red circle"


def open_and_first_query(path: Path, q: np.ndarray, work: Path,
                         text: str | None = None) -> tuple[float, float]:
    """(import seconds, open + first query seconds) in a fresh process (page cache warm).

    With text, the first query is that text: the store's model is loaded (torch import included)."""
    qfile = work / "q.npy"
    np.save(qfile, q)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", OPEN_SCRIPT, str(path), str(qfile), text or "embedding"],
                         capture_output=True, text=True, env=env, check=True).stdout.split()
    return float(out[0]), float(out[1])


# ---- measurements -------------------------------------------------------------------------------
def bench_numpy(x: np.ndarray, queries: np.ndarray, truth: np.ndarray) -> dict:
    def one(q):
        s = x @ q
        top = np.argpartition(-s, 10)[:10]
        return top[np.argsort(-s[top])]

    found, ms = timed(one, queries)
    p50, p95 = pct(ms)
    return {"method": "numpy brute force (float32 in RAM)", "p50_ms": p50, "p95_ms": p95,
            "recall": recall(found, truth)}


def bench_datasets(x: np.ndarray, queries: np.ndarray, truth: np.ndarray) -> dict:
    import datasets
    import faiss
    import pyarrow as pa

    datasets.disable_progress_bars()
    t0 = time.perf_counter()
    arr = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), DIM)
    ds = datasets.Dataset(pa.table({"embeddings": arr, "row": pa.array(np.arange(len(x)))}))
    ds.add_faiss_index(column="embeddings", metric_type=faiss.METRIC_INNER_PRODUCT)
    build = time.perf_counter() - t0

    def one(q):
        with _faiss_threads(1):  # the same single-query thread policy as the Searcher, for a fair comparison
            _, examples = ds.get_nearest_examples("embeddings", q, k=10)
        return examples["row"]

    found, ms = timed(one, queries[:100])
    p50, p95 = pct(ms)
    res = {"method": "datasets add_faiss_index (Flat IP) + get_nearest_examples", "p50_ms": p50,
           "p95_ms": p95, "recall": recall(found, truth[:100]), "build_s": build}

    def idx_only(q):
        with _faiss_threads(1):
            return ds.search("embeddings", q, k=10).indices

    found, ms = timed(idx_only, queries[:100])
    p50, p95 = pct(ms)
    res2 = {"method": "datasets Dataset.search (indices only)", "p50_ms": p50, "p95_ms": p95,
            "recall": recall(found, truth[:100])}
    ds.drop_index("embeddings")
    return [res, res2]


def bench_index(path: Path, record: dict, queries: np.ndarray, truth: np.ndarray, work: Path,
                text_first: bool = False) -> list[dict]:
    """Raw FAISS vs Searcher on one store: a cold first pass, then both interleaved (same contention)."""
    from search.searcher import Searcher

    t0 = time.perf_counter()
    s = Searcher(path)
    open_s = time.perf_counter() - t0
    index = s.candidates.index
    kind = record["type"]

    def raw(q):
        with _faiss_threads(1):
            return index.search(q[None], 10)[1][0]

    def full(q):
        return [h.id for h in s.search_embedding(q, k=10)]

    found, ms = timed(full, queries, warmup=0)  # cold: metadata shards and mapped pages not yet read
    common = {"index": kind, "factory": record.get("factory"), "params": record.get("params"),
              "manifest_recall": record.get("recall_at_10"), "build_s": record.get("build_seconds")}
    p50, p95 = pct(ms)
    imp, first = open_and_first_query(path, queries[0], work)
    cold = {**common, "method": f"Searcher ({kind}), first pass (cold caches)", "p50_ms": p50, "p95_ms": p95,
            "recall": recall(found, truth), "open_s_in_process": open_s, "open_first_query_s": first,
            "import_s": imp}
    if text_first:
        _, cold["open_first_text_query_s"] = open_and_first_query(path, queries[0], work, FIRST_TEXT)
    res = interleaved({"raw": raw, "warm": full}, queries)
    rows = []
    for key, label in (("raw", f"FAISS {record.get('factory')} {record.get('params') or ''}".strip()),
                       ("warm", f"Searcher ({kind}): FAISS + exact rescoring + paths")):
        found, ms = res[key]
        p50, p95 = pct(ms)
        rows.append({**common, "method": label, "p50_ms": p50, "p95_ms": p95, "recall": recall(found, truth)})
    return [*rows, cold]


def vit_b32(work: Path):
    """An Encoder over a random-weight ViT-B/32 CLIP (CLIPConfig defaults) saved under work/
    (the store's model)."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from indexer.encoder import Encoder
    from pixdex.demo.tokenizer import build_tokenizer

    out = work / "vit-b32-random"
    if not (out / "config.json").is_file():
        torch.manual_seed(0)
        tok = build_tokenizer(model_max_length=77)
        cfg = CLIPConfig()
        cfg.text_config.bos_token_id, cfg.text_config.eos_token_id = tok.bos_token_id, tok.eos_token_id
        CLIPModel(cfg).save_pretrained(out)
        CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tok).save_pretrained(out)
    return Encoder(str(out), device="cpu")


def bench_text(enc, repeats: int = 100) -> dict:
    """ViT-B/32 text tower (CLIPConfig defaults, random weights) through indexer.Encoder, batch 1."""
    import torch

    default_threads = torch.get_num_threads()
    res = {"model": "CLIPConfig() text tower (ViT-B/32: 12 layers, 512 wide), random weights",
           "default_threads": default_threads, "cases": []}
    texts = [("8 tokens", "a photo of a red circle"),
             ("16 tokens", "a photo of a small red circle on the left and a blue star"),
             ("77 tokens (max)", " ".join(["circle"] * 200))]
    for policy, ctx in [("Searcher (1 torch thread for <= 8 queries)", lambda: _torch_threads(1)),
                        (f"torch default ({default_threads} threads)", contextlib.nullcontext)]:
        for label, text in texts:
            n_tok = int(enc.tokenize([text])["input_ids"].shape[1])
            with ctx():
                for _ in range(3):  # warm-up, outside the CPU-time window
                    enc.encode_texts([text])
                c0 = time.process_time()
                _, ms = timed(lambda t: enc.encode_texts([t]), [text] * repeats, warmup=0)
                cpu_ms = (time.process_time() - c0) * 1e3 / repeats
            p50, p95 = pct(ms)
            res["cases"].append({"policy": policy, "length": label, "tokens": n_tok, "p50_ms": p50,
                                 "p95_ms": p95, "cpu_ms": cpu_ms})
    return res


# ---- report -------------------------------------------------------------------------------------
def table(rows: list[dict]) -> str:
    lines = [("| method | p50 ms | p95 ms | recall@10 | manifest recall@10 | build s | open+1st query s "
             "| open+1st text query s |"), "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        cells = [_cell(r, k, fmt) for k, fmt in (("p50_ms", ".3f"), ("p95_ms", ".3f"), ("recall", ".3f"),
                                                 ("manifest_recall", ".3f"), ("build_s", ".1f"),
                                                 ("open_first_query_s", ".2f"),
                                                 ("open_first_text_query_s", ".2f"))]
        lines.append(f"| {r['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(row: dict, key: str, fmt: str) -> str:
    v = row.get(key)
    return format(v, fmt) if isinstance(v, (int, float)) else "-"


def machine() -> str:
    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{cpu}, {os.cpu_count()} cores, load average {load:.1f}, Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="100k vectors only")
    p.add_argument("--sizes", default=None,
                   help="comma-separated store sizes (default 100000,1000000; '' for none)")
    p.add_argument("--kinds", default="flat,hnsw,ivf,ivfpq", help="index types to build")
    p.add_argument("--hnsw-max", type=int, default=1_000_000, help="skip HNSW above this size (build time)")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--work", default="/tmp/pixdex-search-bench", help="scratch directory (stores, model)")
    p.add_argument("--no-datasets", action="store_true")
    p.add_argument("--no-text", action="store_true")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sizes_arg = "100000,1000000" if args.sizes is None else args.sizes
    sizes = [100_000] if args.quick else [int(s) for s in sizes_arg.split(",") if s.strip()]
    kinds = args.kinds.split(",")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    report = {"machine": machine(), "date": datetime.now(UTC).isoformat(timespec="seconds"),
              "command": " ".join([Path(sys.executable).name, *sys.argv]), "sizes": {}}
    print(f"# search latency benchmark\n{report['machine']}\n{report['date']}\n", flush=True)
    mix = Mixture(0)
    queries = mix.sample(args.queries, seed=12345)
    encoder = vit_b32(work)  # the stores are "made" with it, so a text query can open them for real
    for n in sizes:
        print(f"## {n:,} vectors", flush=True)
        t0 = time.perf_counter()
        x = mix.sample(n, seed=1)
        truth = exact_truth(x, queries)
        stats = neighbour_stats(x)
        base = write_base_store(work / f"base-{n}", x, encoder.info)
        print(f"   data + store written in {time.perf_counter() - t0:.1f} s; "
              f"median cosine to 1st/10th neighbour "
              f"{stats['nn1_cos']:.3f}/{stats['nn10_cos']:.3f}, random pair {stats['random_pair_cos']:.3f}",
              flush=True)
        rows = [bench_numpy(x, queries, truth)]
        print("   numpy done", flush=True)
        if not args.no_datasets:
            rows += bench_datasets(x, queries, truth)
            print("   datasets done", flush=True)
        del x
        for kind in kinds:
            if kind == "hnsw" and n > args.hnsw_max:
                print(f"   hnsw skipped at {n} (--hnsw-max {args.hnsw_max})", flush=True)
                continue
            path, record = store_with_index(base, work / f"{kind}-{n}", kind)
            rows += bench_index(path, record, queries, truth, work, text_first=True)
            print(f"   {kind} done (build {record.get('build_seconds')} s)", flush=True)
            shutil.rmtree(path)
        shutil.rmtree(base)
        report["sizes"][n] = {"data": stats, "rows": rows}
        print("\n" + table(rows) + "\n", flush=True)
    if not args.no_text:
        text = bench_text(encoder)
        report["text_encoding"] = text
        print(f"## text encoding (batch 1, indexer.Encoder.encode_texts)\n\n{text['model']}\n")
        print("| threads | query length | p50 ms | p95 ms | CPU ms per query |\n|---|---|---:|---:|---:|")
        for c in text["cases"]:
            print(f"| {c['policy']} | {c['length']} | {c['p50_ms']:.1f} | {c['p95_ms']:.1f} | "
                  f"{c['cpu_ms']:.1f} |")
    report["targets"] = TARGETS
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
