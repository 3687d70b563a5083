"""`pixdex serve`: the HTTP API and web page over one store."""

from __future__ import annotations

from indexer.params import IMAGE_PIXELS, LIMIT, PORT, TIMEOUT, device_arg, store_arg
from pixdex.cli.common import size_arg


def register(sub) -> None:
    p = sub.add_parser("serve", help="serve a store over HTTP: JSON API and a web page",
                       description="Starts a local web server (127.0.0.1 by default) with a search page and "
                       "a JSON API; OpenAPI docs at /docs.")
    p.add_argument("store", metavar="STORE", type=store_arg)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; 0.0.0.0 exposes it)")
    p.add_argument("--port", type=PORT.arg(), default=8000)
    p.add_argument("--model", default=None, help="model (default: the store's own)")
    p.add_argument("--device", type=device_arg, default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--max-k", type=LIMIT.arg(), default=200,
                   help="largest k a request may ask for (default 200)")
    p.add_argument("--max-labels", type=LIMIT.arg(), default=100,
                   help="most labels per classify request (default 100)")
    p.add_argument("--max-upload", type=size_arg, default="10M", help="largest upload (default 10M)")
    p.add_argument("--max-image-pixels", type=IMAGE_PIXELS.arg(), default=40_000_000,
                   help="largest uploaded image (default 40 Mpx)")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="also answer requests whose Host header is NAME (repeatable; '*' for any). Loopback "
                   "names and the --host address are always allowed; others are refused against DNS "
                   "rebinding")
    p.add_argument("--allow-url-queries", action="store_true",
                   help="let queries name http(s) image URLs (image:https://...), fetched within "
                   "--url-timeout and --max-upload; without it images come only as uploads or stored ids")
    p.add_argument("--url-timeout", type=TIMEOUT.arg(), default=5.0,
                   help="seconds for one image URL, all of it (default 5)")
    p.set_defaults(func=run)


def run(args) -> int:
    import uvicorn

    from pixdex.server.app import create_app
    from pixdex.server.limits import Limits

    limits = Limits(max_k=args.max_k, max_labels=args.max_labels, max_upload_bytes=args.max_upload,
                    max_image_pixels=args.max_image_pixels, allow_url_queries=args.allow_url_queries,
                    url_timeout=args.url_timeout)
    app = create_app(args.store, model=args.model, device=args.device, limits=limits, host=args.host,
                     allow_hosts=args.allow_host)
    print(f"pixdex: serving {args.store} on http://{args.host}:{args.port}/  (API docs: /docs)", flush=True)
    if args.host in ("0.0.0.0", "::") and not args.allow_host:
        print("pixdex: requests must name 127.0.0.1 or localhost as their host; to be reached by another "
              "name or address, add --allow-host NAME", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
