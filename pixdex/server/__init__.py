"""HTTP API and web page over one store (FastAPI; the `serve` extra)."""
