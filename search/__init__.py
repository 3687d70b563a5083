"""pixdex search: rank a store's images for text, image, stored-item and mixed queries.

    from search import Searcher
    s = Searcher("photos.pixdex")             # the store's own model, loaded on first use
    hits = s.search("a red circle", k=10)     # list[Hit]: rank, id, path, score (+ .metadata)
    s.search(['"2:dog" + ./pool.jpg - grass', "id:12"], where="width >= 256")

Names are imported lazily so that light users (the CLI's --help) do not pay for torch.
"""

from importlib import import_module

_EXPORTS = {
    "Searcher": "search.searcher", "Hit": "search.searcher", "Scope": "search.searcher",
    "Query": "search.query", "Term": "search.query", "parse_query": "search.query", "mix": "search.query",
    "parse_filter": "search.filters", "Filter": "search.filters",
    "write_html": "search.results", "records": "search.results", "format_table": "search.results",
}
__all__ = ["Filter", "Hit", "Query", "Scope", "Searcher", "Term", "format_table", "mix", "parse_filter",
           "parse_query", "records", "write_html"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'search' has no attribute {name!r}")
