"""Few-shot tagging, side by side: zero-shot, a plain logistic-regression probe, and pixdex's classifier.

On a shapes-world store embedded with the shipped shapes-clip model, for tasks where the prompts are
strong and where they are weak:
  shape (6-way), combo (48 colour x shape labels, scored on images of the 6 pairs shapes-clip never
  saw in training), size (3), position (5), palette (warm/cool: no caption says it) and background
  (plain/gradient/noise/stripes: no caption says it either).
For 0, 1, 2, 4, 8 and 16 examples per label, averaged over 10 draws of examples, top-1 on the images not
drawn. The probe is scikit-learn's LogisticRegression on the same normalised embeddings, C chosen by
the same stratified cross-validation (C=1, sklearn's default, with one example per label).
Also: training time on 1,000 examples, and tagging 1M stored embeddings taught vs zero-shot.

    python benchmarks/fewshot.py --work /tmp/bench-fewshot      # pip install scikit-learn
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from classify.fewshot import MAX_FOLDS, stratified_folds, teach
from classify.prompts import LabelSet
from classify.scoring import Scoring
from classify.tagging import iter_tag_blocks
from indexer.encoder import Encoder
from indexer.store import Store, is_store
from pixdex.demo import world
from pixdex.demo.assets import shapes_clip_path

SHOTS = (0, 1, 2, 4, 8, 16)
POSITION = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
            "center": "in the center"}
# name: (labels, template, label of a labels.csv row or None, rows used: "single" objects or "all")
TASKS = {
    "shape": (list(world.SHAPES), "a photo of a {}.", lambda r: r["shape"], "single"),
    "combo": ([f"{c} {s}" for c, s in world.ALL_COMBOS], "a photo of a {}.",
              lambda r: f"{r['color']} {r['shape']}", "single"),
    "size": (list(world.SIZES), "a photo of a {} shape.", lambda r: r["size"], "single"),
    "position": (list(POSITION.values()), "a shape {}.", lambda r: POSITION[r["position"]], "single"),
    "palette": (["warm", "cool"], "a photo of a {} coloured shape.", lambda r: world.PALETTE[r["color"]],
                "single"),
    "background": (list(world.BACKGROUNDS), "a shape on a {} background.", lambda r: r["background"], "all"),
}
PROBE_C = (0.1, 1.0, 10.0, 100.0)


def build(work: Path, count: int, seed: int, enc: Encoder) -> tuple[Store, dict[int, dict]]:
    """The benchmark store (built once, reused) and each stored id's labels.csv row."""
    from indexer.job import index_collection

    images, store = work / "images", work / "store"
    if not is_store(store):
        world.write_collection(images, count=count, seed=seed)
        index_collection([str(images)], store, model=enc, progress=False)
    st = Store.open(store)
    rows = {r["file"]: r for r in world.read_labels(images / "labels.csv")}
    ids = st.ids()
    return st, {int(i): rows[Path(p).name] for i, p in zip(ids, st.paths(ids))}


def probe_predict(x_train, y_train, x_test) -> np.ndarray:
    """sklearn LogisticRegression, C by stratified cross-validation on the examples (C=1 with one each)."""
    from sklearn.linear_model import LogisticRegression

    smallest = np.bincount(y_train).min()
    c = 1.0
    if smallest >= 2:
        folds = stratified_folds(y_train.tolist(), min(MAX_FOLDS, int(smallest)))
        scores = []
        for cc in PROBE_C:
            right = 0
            for test in folds:
                train = np.setdiff1d(np.arange(len(y_train)), test)
                m = LogisticRegression(C=cc, max_iter=1000).fit(x_train[train], y_train[train])
                right += int((m.predict(x_train[test]) == y_train[test]).sum())
            scores.append(right)
        c = PROBE_C[int(np.argmax(scores))]
    return LogisticRegression(C=c, max_iter=1000).fit(x_train, y_train).predict(x_test)


def run_task(name: str, st: Store, rows: dict[int, dict], enc: Encoder, draws: int) -> dict:
    labels, template, label_of, which = TASKS[name]
    ids = np.array(sorted(i for i, r in rows.items() if which == "all" or ";" not in r["shape"]))
    y = np.array([labels.index(label_of(rows[int(i)])) for i in ids])
    x = st.vectors(ids)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    scored = np.ones(len(ids), bool)
    if name == "combo":  # scored on the pairs the model never saw; examples come from all 48 labels
        held = {f"{c} {s}" for c, s in world.HELDOUT_COMBOS}
        scored = np.array([labels[k] in held for k in y])
    ls = LabelSet.build(enc, labels, [template])
    zero = ((x @ ls.embeddings.T).argmax(axis=1) == y)[scored].mean()
    out = {"zero-shot": {0: zero}, "probe": {}, "pixdex": {0: zero}}
    out["se"] = {}
    for shots in SHOTS[1:]:
        right = {"zero-shot": [], "probe": [], "pixdex": []}  # per draw, per test image: 0/1
        for d in range(draws):
            rng = np.random.default_rng(1000 * shots + d)
            train = np.concatenate([rng.choice(np.flatnonzero(y == c), shots, replace=False)
                                    for c in range(len(labels))])
            test = np.setdiff1d(np.arange(len(y)), train)
            test = test[scored[test]]
            taught = teach(ls, x[train], y[train])
            w, _ = taught.weights("single")
            right["pixdex"].append((x[test] @ w + taught.offsets("single")).argmax(axis=1) == y[test])
            right["probe"].append(probe_predict(x[train], y[train], x[test]) == y[test])
            right["zero-shot"].append((x[test] @ ls.embeddings.T).argmax(axis=1) == y[test])
        for m in ("probe", "pixdex"):
            out[m][shots] = float(np.mean([r.mean() for r in right[m]]))
        out["zero-shot"][shots] = zero
        peer = max(("zero-shot", "probe"), key=lambda m: out[m][shots])
        out["se"][shots] = paired_se(right["pixdex"], right[peer])
        print(f"  {name:<10} {shots:>2} shots  zero-shot {zero:.3f}  probe {out['probe'][shots]:.3f}  "
              f"pixdex {out['pixdex'][shots]:.3f}  (pixdex - {peer}: standard error {out['se'][shots]:.3f})",
              flush=True)
    return out


def paired_se(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    """Standard error of the per-image accuracy difference of two methods on the same test images, mean
    over draws (the draws share most test images, so this noise does not shrink with more draws)."""
    return float(np.mean([np.std(x.astype(float) - z.astype(float), ddof=1) / np.sqrt(len(x))
                          for x, z in zip(a, b)]))


def time_training(st: Store, rows: dict, enc: Encoder, task: str, n: int = 1000, repeats: int = 3) -> float:
    """Median seconds of teach() on n examples of the task (cross-validation included)."""
    labels, template, label_of, which = TASKS[task]
    ids = np.array(sorted(i for i, r in rows.items() if ";" not in r["shape"]))[:n]
    y = np.array([labels.index(label_of(rows[int(i)])) for i in ids])
    assert np.bincount(y, minlength=len(labels)).min() >= 2, "every label needs examples"
    ls = LabelSet.build(enc, labels, [template])
    x = st.vectors(ids)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        teach(ls, x, y)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def time_bulk(path: Path, rows: int, dim: int, n_labels: int) -> tuple[float, float]:
    """Seconds to tag `rows` synthetic stored embeddings zero-shot and taught
    (best of 2 each, alternating)."""
    from bulk_tagging import build_store

    st = build_store(path, rows, dim)
    rng = np.random.default_rng(3)
    emb = rng.standard_normal((n_labels, dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    ls = LabelSet([f"l{i}" for i in range(n_labels)], emb, Scoring("clip", 100.0), ["{}"])
    ex_ids = rng.choice(st.count, 10 * n_labels, replace=False)
    taught = teach(ls, st.vectors(np.sort(ex_ids)), np.repeat(np.arange(n_labels), 10))

    def run(head) -> float:
        t0 = time.perf_counter()
        for _ in iter_tag_blocks(st, head, "single", 1, progress=False):
            pass
        return time.perf_counter() - t0

    zs, tt = [], []
    for _ in range(2):
        zs.append(run(ls))
        tt.append(run(taught))
    return min(zs), min(tt)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/bench-fewshot", help="folder for the images and stores (reused)")
    ap.add_argument("--count", type=int, default=3000, help="images in the shapes-world store")
    ap.add_argument("--seed", type=int, default=123)
    ap.add_argument("--draws", type=int, default=10)
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--bulk-rows", type=int, default=1_000_000,
                    help="stored embeddings for the tagging cost (0: skip)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    enc = Encoder(shapes_clip_path(), device="cpu")
    st, rows = build(work, args.count, args.seed, enc)
    print(f"# few-shot tagging, {datetime.now(UTC):%Y-%m-%d}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores; store {st.count} images, shapes-clip", flush=True)
    results = {t: run_task(t, st, rows, enc, args.draws) for t in args.tasks.split(",")}
    print("\n| task | method | " + " | ".join(f"{s} shots" for s in SHOTS) + " |")
    print("|---|---|" + "---|" * len(SHOTS))
    worst, worst_se = -1.0, 0.0
    for t, res in results.items():
        for m in ("zero-shot", "probe", "pixdex"):
            cells = [f"{res[m][s]:.3f}" if s in res[m] else "-" for s in SHOTS]
            print(f"| {t} | {m} | " + " | ".join(cells) + " |")
        for s in SHOTS[1:]:
            gap = max(res["zero-shot"][s], res["probe"][s]) - res["pixdex"][s]
            if gap > worst:
                worst, worst_se = gap, res["se"][s]
    gain = np.mean([res["pixdex"][16] - res["zero-shot"][16] for res in results.values()])
    print(f"\nworst shortfall of pixdex against the better of zero-shot and probe: {100 * worst:.1f} points, "
          f"test-sample standard error {100 * worst_se:.1f} (target <= 1)")
    print(f"16 shots, pixdex minus zero-shot, mean over {len(results)} tasks: {100 * gain:+.1f} points "
          f"(target >= 10)")
    for task in ("shape", "combo"):
        print(f"training on 1,000 examples ({task}, {len(TASKS[task][0])} labels, "
              f"cross-validation included): "
              f"{time_training(st, rows, enc, task):.2f} s (target <= 1)", flush=True)
    if args.bulk_rows:
        zs, tt = time_bulk(work / f"bulk-{args.bulk_rows}.pixdex", args.bulk_rows, 512, 100)
        print(f"tagging {args.bulk_rows:,} stored 512-d embeddings, 100 labels: zero-shot {zs:.2f} s, taught "
              f"{tt:.2f} s, ratio {tt / zs:.2f}x (target <= 1.2)")


if __name__ == "__main__":
    main()
