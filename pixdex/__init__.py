"""pixdex application shell: CLI, HTTP API and demo assets over indexer/search/classify."""


def __getattr__(name: str):
    """`__version__` is read from the package metadata on first use (importlib.metadata costs ~50 ms)."""
    if name != "__version__":
        raise AttributeError(f"module 'pixdex' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pixdex")
    except PackageNotFoundError:  # running from a source tree without install
        return "0.0.0+src"
