"""``mm2latent serve``: the web page (gradio), offline, bound to 127.0.0.1 by default."""

from __future__ import annotations

from ..common.errors import UserError
from .argtypes import positive_int


WEB_EXTRA_HINT = ("the web page needs gradio: pip install 'mm2latent[web]' "
                  "(in a source checkout: pip install -e '.[web]')")


def register(sub) -> None:
    p = sub.add_parser("serve", help="web page: paint a mask, sketch, type text; edit a photo",
                       description="Start the gradio page (offline; no analytics, no CDN). Binds to 127.0.0.1 "
                       "unless --host says otherwise.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--weights", default=None)
    p.add_argument("--concurrency", type=positive_int, default=1, help="generations run at once (default 1)")
    p.add_argument("--queue", type=positive_int, default=16, help="waiting requests before 'busy' (default 16)")
    p.set_defaults(func=_serve)


def _serve(a) -> int:
    if not 0 < a.port < 65536:
        raise UserError("--port must lie in 1..65535")
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise UserError(WEB_EXTRA_HINT) from None
    from ..app.server import serve

    if a.host not in ("127.0.0.1", "localhost"):
        print(f"mm2latent: warning: serving on {a.host}; anyone who can reach it can use the page")
    serve(a.weights, a.host, a.port, a.concurrency, a.queue, block=True)
    return 0
