"""pixdex indexer: sources -> safe decode -> encoder -> store (embedding shards, metadata, FAISS index).

    from indexer import Encoder, Store, index_collection
    summary = index_collection(["photos/"], "photos.pixdex", model="shapes-clip")
    store = Store.open("photos.pixdex")

Names are imported lazily so that light users (the CLI's --help) do not pay for torch.
"""

from importlib import import_module

_EXPORTS = {
    "Encoder": "indexer.encoder", "ModelInfo": "indexer.models", "get_encoder": "indexer.encoder",
    "PixdexError": "indexer.errors", "ModelMismatchError": "indexer.errors",
    "IndexSummary": "indexer.job", "index_collection": "indexer.job",
    "DEFAULT_MODEL": "indexer.models", "resolve_model": "indexer.models",
    "Store": "indexer.store", "StoreWriter": "indexer.store",
}
__all__ = ["DEFAULT_MODEL", "Encoder", "IndexSummary", "ModelInfo", "ModelMismatchError", "PixdexError",
           "Store", "StoreWriter", "get_encoder", "index_collection", "resolve_model"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'indexer' has no attribute {name!r}")
