"""The store format, defined once: every file name a store uses, what a manifest references, and the
manifest's index record. `indexer.store` reads and writes stores with it; the index builders, `repair`
and the object-storage sync (`indexer.remote_store`) name files only through it.

Layout (every file immutable once named in the manifest; the manifest is written last):
    manifest.json                  the committed state: model, counts, shard list, current files
    shards/emb-NNNNNN.npy          float16 [rows, dim], L2-normalised, memory-mappable, append-only
    shards/meta-NNNNNN.parquet     id, path, bytes, mtime, width, height, sha256, source columns
                                   (rewritten as meta-NNNNNN-gGGGGGG.parquet when mtimes are refreshed)
    deleted-GGGGGG.npy             ids of removed rows (sorted int64)
    errors-GGGGGG.parquet          files that could not be indexed: path, reason, bytes, mtime (, path_raw)
    tags/NAME-GGGGGG.parquet       tag columns written by classify --save-as (id + columns)
    tags/NAME-GGGGGG.tagger.json   the classifier that made tag set NAME (labels, weights, method...), so
                                   tags can be computed for items added later (manifest "taggers")
    index-GGGGGG.faiss             the FAISS index over live rows, FAISS ids = store ids
    index-GGGGGG.ivfdata           a merged sharded build's inverted lists (beside its index file)
    index-GGGGGG-part-PPPP.faiss   the parts of an unmerged sharded build
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field, fields

FORMAT = "pixdex-store"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
# Files a writer owns (and may sweep when no manifest names them); anything else in the folder is left alone.
OWNED = re.compile(r"^(\.tmp-.*|index-\d+(-part-\d+)?\.(faiss|ivfdata)|deleted-\d+\.npy|errors-\d+\.parquet|"
                   r"shards/.*|tags/.*)$")
# Names a manifest may refer to (anything else, e.g. "../x" or an absolute path, is a damaged manifest).
NAMED = re.compile(r"^(index-\d+(-part-\d+)?\.(faiss|ivfdata)|deleted-\d+\.npy|errors-\d+\.parquet|"
                   r"shards/(emb-\d+\.npy|meta-\d+(-g\d+)?\.parquet)|tags/[A-Za-z0-9_.-]+-\d+\.(parquet|tagger\.json))$")
SHARD_FILE = re.compile(r"^(emb|meta)-(\d+)(-g\d+)?\.(npy|parquet)$")
TAG_SET_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


# ---- file names --------------------------------------------------------------------------------
def embeddings_file(number: int) -> str:
    return f"shards/emb-{number:06d}.npy"


def metadata_file(number: int, generation: int | None = None) -> str:
    """A shard's metadata; rewritten ones (refreshed mtimes, new columns) carry the generation."""
    return f"shards/meta-{number:06d}.parquet" if generation is None else \
        f"shards/meta-{number:06d}-g{generation:06d}.parquet"


def metadata_files_of(number: int, listing: list[str]) -> list[str]:
    """The metadata files of shard `number` among file names in shards/, oldest first."""
    return sorted(x for x in listing if re.fullmatch(rf"meta-{number:06d}(-g\d+)?\.parquet", x))


def shard_number(name: str) -> int | None:
    """The shard number of an emb-/meta- file name (None for other names)."""
    match = SHARD_FILE.match(name.rsplit("/", 1)[-1])
    return int(match.group(2)) if match else None


def deleted_file(generation: int) -> str:
    return f"deleted-{generation:06d}.npy"


def errors_file(generation: int) -> str:
    return f"errors-{generation:06d}.parquet"


def tags_file(name: str, generation: int) -> str:
    return f"tags/{name}-{generation:06d}.parquet"


def tagger_file(name: str, generation: int) -> str:
    """The classifier record that made tag set `name` (so later items can be tagged the same way)."""
    return f"tags/{name}-{generation:06d}.tagger.json"


def index_file(generation: int) -> str:
    return f"index-{generation:06d}.faiss"


def ivfdata_file(generation: int) -> str:
    return f"index-{generation:06d}.ivfdata"


def index_part_file(generation: int, part: int) -> str:
    return f"index-{generation:06d}-part-{part:04d}.faiss"


def temporary_file(name: str) -> str:
    """A name a writer may use while building `name` (owned, never named by a manifest)."""
    return f".tmp-{name}"


def referenced_files(m: dict) -> set[str]:
    """Every file the manifest names (relative paths), the manifest itself excluded."""
    names: set[str] = set()
    for s in m.get("shards") or []:
        names.update([s["embeddings"], s["metadata"]])
    for key in ("deleted", "errors"):
        if m.get(key):
            names.add(m[key])
    index = m.get("index") or {}
    if index.get("file"):
        names.add(index["file"])
        names.update(index.get("files") or [])  # sharded indexes: parts or the .ivfdata file
    names.update((m.get("tags") or {}).values())
    names.update((m.get("taggers") or {}).values())
    return names


# ---- the index record --------------------------------------------------------------------------
@dataclass
class IndexRecord:
    """The manifest's "index" entry: what was built, how well it searches, and which rows it holds.

    Written by the index builders (indexer.index_build, indexer.sharded_index); readers see it as the
    manifest's dict (Store.index_info).
    """

    type: str  # flat | hnsw | ivf | ivfpq | ivfpq-ondisk | ivfpq-parts
    factory: str
    nlist: int = 0
    pq_m: int = 0
    reason: str = ""
    params: dict = field(default_factory=dict)  # nprobe / efSearch tuned for the target recall
    recall_at_10: float | None = None
    search_ms_per_query: float | None = None
    rescored_recall_at_10: float | None = None  # IVF-PQ: recall after the Searcher's exact re-scoring
    ntotal: int = 0
    file: str | None = None
    files: list[str] | None = None  # sharded builds: the .ivfdata file, or the parts
    rows: int = 0  # the manifest's row count the index was built for
    deleted: int = 0  # removed rows already taken out of it
    max_id: int = -1  # the highest id it holds
    trained_on: int = 0
    requested: str = "auto"  # what --index asked for (kept by later `auto` runs)
    how: str = "built"  # built | updated
    build_seconds: float = 0.0
    plan: dict | None = None  # sharded builds: parts, workers, memory
    timings: dict | None = None
    peak_rss_worker: int | None = None

    OPTIONAL = ("search_ms_per_query", "rescored_recall_at_10", "files", "plan", "timings", "peak_rss_worker")

    def to_dict(self) -> dict:
        """The manifest entry (optional facts left out when unknown)."""
        return {k: v for k, v in asdict(self).items() if v is not None or k not in self.OPTIONAL}

    @classmethod
    def from_dict(cls, d: dict) -> IndexRecord:
        """A record from a manifest entry (keys this version does not know are left out)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def not_a_store(path: str | os.PathLike) -> str:
    """Why a local path is no store ("" when it has a manifest): one wording for every command."""
    if os.path.isfile(os.path.join(path, MANIFEST)):
        return ""
    what = "does not exist" if not os.path.exists(path) else f"is not a pixdex store (no {MANIFEST})"
    return f"store {path} {what}"


def recorded_fingerprint(path: str | os.PathLike) -> str:
    """The model fingerprint a local store's manifest records, "" when it cannot be read: for work that may
    start before the store is opened and checked (Store.open reports what is wrong)."""
    try:
        with open(os.path.join(path, MANIFEST), "rb") as f:
            fingerprint = json.load(f)["model"]["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    return fingerprint if isinstance(fingerprint, str) else ""
