"""pixdex application shell: CLI, HTTP API and demo assets over indexer/search/classify."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pixdex")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+src"
