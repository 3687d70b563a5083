"""`pixdex serve`: the HTTP API and web page over one store."""

from __future__ import annotations

from indexer.params import IMAGE_PIXELS, LIMIT, PORT, device_arg
from pixdex.cli.common import size_arg


def register(sub) -> None:
    p = sub.add_parser("serve", help="serve a store over HTTP: JSON API and a web page",
                       description="Starts a local web server (127.0.0.1 by default) with a search page and a JSON "
                       "API; OpenAPI docs at /docs.")
    p.add_argument("store", metavar="STORE")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 exposes it)")
    p.add_argument("--port", type=PORT.arg(), default=8000)
    p.add_argument("--model", default=None, help="model (default: the store's own)")
    p.add_argument("--device", type=device_arg, default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--max-k", type=LIMIT.arg(), default=200, help="largest k a request may ask for (default 200)")
    p.add_argument("--max-labels", type=LIMIT.arg(), default=100, help="most labels per classify request (default 100)")
    p.add_argument("--max-upload", type=size_arg, default="10M", help="largest upload (default 10M)")
    p.add_argument("--max-image-pixels", type=IMAGE_PIXELS.arg(), default=40_000_000, help="largest uploaded image (default 40 Mpx)")
    p.set_defaults(func=run)


def run(args) -> int:
    import uvicorn

    from pixdex.server.app import create_app
    from pixdex.server.limits import Limits

    limits = Limits(max_k=args.max_k, max_labels=args.max_labels, max_upload_bytes=args.max_upload,
                    max_image_pixels=args.max_image_pixels)
    app = create_app(args.store, model=args.model, device=args.device, limits=limits)
    print(f"pixdex: serving {args.store} on http://{args.host}:{args.port}/  (API docs: /docs)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
