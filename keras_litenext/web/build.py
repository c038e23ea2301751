"""The static page for one `.tflite` file, and a local server for it.

`build_page(source, out)` writes a folder that any static host serves: the page (`index.html`,
`app.mjs`, `style.css`, copied from `page/` beside this module), MediaPipe Tasks' ES module and
WebAssembly from the pinned npm package (`npm.vendor`), the model as `model.tflite` and its card
as `model.json` (`card.read_card`). `serve(folder)` serves it on 127.0.0.1 from a thread, with the
cross-origin isolation headers (threaded WebAssembly builds need them) and the MIME types
WebAssembly streaming needs.
"""

import functools
import http.server
import pathlib
import shutil
import threading

from keras_litenext.web.card import CardError, read_card
from keras_litenext.web.npm import NpmError, vendor

PAGE = pathlib.Path(__file__).resolve().parent / "page"
PAGE_FILES = ("index.html", "app.mjs", "style.css")
KINDS = ("int8", "fp16", "fp32")


class WebError(ValueError):
    """The page could not be built, served or checked (one line, naming the file)."""


def resolve_model(source, kind="int8"):
    """The `.tflite` file of `source`: the file itself, or in an export folder (or a run's
    `tflite/` folder) the `*_<kind>.tflite` file."""
    path = pathlib.Path(source)
    if path.is_file():
        return path
    if not path.is_dir():
        raise WebError(f"{source}: no such file or folder")
    for folder in (path, path / "tflite"):
        found = sorted(folder.glob(f"*_{kind}.tflite")) if folder.is_dir() else []
        if found:
            return found[0]
    others = sorted(str(p.relative_to(path)) for p in path.glob("**/*.tflite"))
    hint = f" (it has {', '.join(others[:4])}: pass one of them)" if others else " (export the run first: keras-litenext export RUN)"
    raise WebError(f"{source}: no *_{kind}.tflite file in it or in its tflite/ folder{hint}")


def build_page(source, out, kind="int8", npm_cache=None):
    """Write the page for a `.tflite` file (or a run / export folder's `kind` file) into `out`.

    Args:
        source: a `.tflite` file, an export folder or a run folder.
        out: the folder to write (created; the page's own files in it are replaced).
        kind: which file of a folder (`int8`, `fp16`, `fp32`).
        npm_cache: where the npm tarballs are cached (default `npm.default_cache()`).

    Returns:
        The page's `model.json` dict, with `"packages"` (`{name: version}`).

    Raises:
        WebError: a missing or unreadable model, or a package that could not be fetched.
    """
    model = resolve_model(source, kind)
    try:
        info = read_card(model)
    except CardError as err:
        raise WebError(str(err)) from None
    out = pathlib.Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name in PAGE_FILES:
            shutil.copyfile(PAGE / name, out / name)
        info["packages"] = vendor(out / "vendor", npm_cache)
        shutil.copyfile(model, out / info["file"])
    except NpmError as err:
        raise WebError(str(err)) from None
    except OSError as err:
        raise WebError(f"{out}: cannot write the page ({err.strerror or err})") from None
    from keras_litenext.utils import write_json

    write_json(out / "model.json", info)
    return info


class _Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {  # noqa: RUF012  (the base class's own attribute, extended)
        **http.server.SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript", ".js": "text/javascript",
        ".wasm": "application/wasm", ".json": "application/json", ".tflite": "application/octet-stream"}

    def end_headers(self):
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def log_message(self, *args):  # quiet: the command prints its own lines
        pass


class PageServer:
    """The page's folder on `http://127.0.0.1:PORT/`, served from a daemon thread (`close()` stops it)."""

    def __init__(self, folder, port=0, host="127.0.0.1"):
        handler = functools.partial(_Handler, directory=str(folder))
        try:
            self.httpd = http.server.ThreadingHTTPServer((host, port), handler)
        except OSError as err:
            raise WebError(f"{host}:{port}: cannot serve the page ({err.strerror or err})") from None
        self.url = f"http://{host}:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def serve(folder, port=0, host="127.0.0.1"):
    """Serve a built page folder; returns the running `PageServer` (its `url`)."""
    return PageServer(folder, port, host)
