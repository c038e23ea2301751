"""The page checked in a real browser: headless Chromium runs images through the page's own code.

`check_page(model, images, out)` builds the page for the file in a temporary folder, serves it on
127.0.0.1, opens it in the system's Chromium (Debian's `chromium`) driven by Python Playwright with
`executable_path` (no browser is downloaded), and gives the images to the page's file input, the
path a drop or a pick takes. For each image it writes `<stem>_mask.png` (the class index per pixel,
at the image's size) or `<stem>_scores.json` (a classifier's logits, probabilities and top class),
with `confidence=True` also `<stem>_confidence.npy` (MediaPipe's confidence masks, H x W x masks),
and `web_check.json` with the page's timings. Every request that leaves 127.0.0.1 is refused and
listed there (there should be none).
"""

import base64
import contextlib
import json
import os
import pathlib
import shutil
import statistics
import tempfile

import numpy as np

from keras_litenext.web.build import WebError, build_page, serve

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
INSTALL_HINT = "apt-get install chromium; pip install playwright (no `playwright install`: the system browser is used)"
# headless Chromium as root in a container: no sandbox; WebGL (MediaPipe's image input) on SwiftShader
BROWSER_ARGS = ("--no-sandbox", "--enable-unsafe-swiftshader", "--use-angle=swiftshader", "--disable-gpu-sandbox")


def find_browser(executable=None):
    """The Chromium executable: `executable`, `$KERAS_LITENEXT_CHROMIUM`, else the first of
    `BROWSERS` on the PATH; None when there is none."""
    for name in (executable, os.environ.get("KERAS_LITENEXT_CHROMIUM"), *BROWSERS):
        found = name and shutil.which(name)
        if found:
            return found
    return None


def missing():
    """Why the check cannot run here ("... not installed"), or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return f"Python Playwright is not installed ({INSTALL_HINT})"
    if find_browser() is None:
        return f"Chromium is not installed ({INSTALL_HINT})"
    return None


class BrowserPage:
    """A built page open in headless Chromium (a context manager): `run(paths)` feeds images.

    `browser`: the open page of another `BrowserPage` whose Chromium this page shares (a second
    tab: one Playwright per thread); it is left open when this page closes. `confidence`: the page
    also returns a segmenter's confidence masks (`?confidence=1`)."""

    def __init__(self, folder, executable=None, timeout=120, browser=None, confidence=False):
        self.folder, self.executable, self.timeout = pathlib.Path(folder), executable, timeout
        self.query = "?confidence=1" if confidence else ""
        self.owner = browser
        self.outside = []  # requests refused: anything not on the page's own server
        self.console = []

    def __enter__(self):
        why = missing()
        if why:
            raise WebError(why)
        self.server = serve(self.folder)
        try:
            if self.owner is None:
                from playwright.sync_api import sync_playwright

                self.playwright = sync_playwright().start()
                self.browser = self.playwright.chromium.launch(executable_path=find_browser(self.executable),
                                                               args=list(BROWSER_ARGS))
            else:
                self.browser = self.owner.browser
            self.page = self.browser.new_page(viewport={"width": 1100, "height": 900})
            self.page.set_default_timeout(self.timeout * 1000)
            self.page.route("**/*", self._route)
            self.page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
            self.page.goto(self.server.url + self.query)
            self.ready = self.page.evaluate("() => window.litenext.ready")
        except Exception:
            self.__exit__()
            raise
        return self

    def _route(self, route):
        if route.request.url.startswith(self.server.url):
            route.continue_()
        else:
            self.outside.append(route.request.url)
            route.abort()

    def errors(self):
        """The messages the page shows."""
        return self.page.evaluate("() => window.litenext.errors")

    def run(self, paths, runs=0):
        """Results of the page for image files (dicts from `window.litenext.results`), in order."""
        before = self.page.evaluate("() => window.litenext.results.length")
        self.page.evaluate("n => { window.litenext.timeRuns = n; }", int(runs))
        self.page.set_input_files("#images", [str(p) for p in paths])
        self.page.wait_for_function("n => window.litenext.results.length >= n", arg=before + len(paths))
        return self.page.evaluate("n => window.litenext.results.slice(n)", before)

    def version(self):
        return self.browser.version

    def __exit__(self, *exc):
        closes = [lambda: self.browser.close(), lambda: self.playwright.stop()] if self.owner is None else [lambda: self.page.close()]
        for close in (*closes, lambda: self.server.close()):
            with contextlib.suppress(Exception):  # already closed, or never opened
                close()
        return False


def _save_mask(path, record):
    from keras_litenext.visualize import save_png

    mask = np.frombuffer(base64.b64decode(record["mask"]), np.uint8).reshape(record["height"], record["width"])
    save_png(path, mask)
    return mask


def check_page(model, images, out, runs=0, kind="int8", npm_cache=None, executable=None, timeout=120, confidence=False):
    """Run images through the page in headless Chromium; write masks or scores and `web_check.json`.

    Args:
        model: a `.tflite` file (or a run / export folder: its `kind` file).
        images: image files (PNG, JPEG; grey or RGB).
        out: the folder for `<stem>_mask.png` / `<stem>_scores.json` and `web_check.json`.
        runs: timed runs per image after the first (0: the first run's time only).
        confidence: also write a segmenter's `<stem>_confidence.npy` (float32, H x W x masks:
            MediaPipe's confidence masks, the activation of the file's logits).
        npm_cache: the npm tarball cache (`npm.default_cache()` by default).
        executable: the Chromium to drive (default `find_browser()`).

    Returns:
        The `web_check.json` dict: `{"model", "browser", "images": [...], "outside_requests", ...}`.

    Raises:
        WebError: no browser or Playwright, a page that does not load the model, an image it
            rejects, or a request that left 127.0.0.1.
    """
    out = pathlib.Path(out)
    paths = [pathlib.Path(p) for p in images]
    for p in paths:
        if not p.is_file():
            raise WebError(f"{p}: no such image file")
    with tempfile.TemporaryDirectory(prefix="litenext-web-") as folder:
        info = build_page(model, folder, kind=kind, npm_cache=npm_cache)
        with BrowserPage(folder, executable, timeout, confidence=confidence) as browser:
            if not browser.ready:
                raise WebError(f"{info['source_file']}: the page did not load it: {' '.join(browser.errors()) or 'no message'}")
            records = browser.run(paths, runs)
            version, outside = browser.version(), list(browser.outside)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for path, record in zip(paths, records):
        if record.get("error"):
            raise WebError(record["error"])
        row = {"image": str(path), "width": record["width"], "height": record["height"], "first_ms": record["ms"],
               "median_ms": record.get("median_ms"), "runs": record.get("runs", 0)}
        if record.get("mask") is not None:
            row["mask"] = str(out / f"{path.stem}_mask.png")
            _save_mask(row["mask"], record)
            row["areas"] = dict(zip(info["classes"], record["areas"]))
            if confidence:
                row["confidence"] = str(out / f"{path.stem}_confidence.npy")
                masks = [np.frombuffer(base64.b64decode(m), np.float32) for m in record.get("confidence") or []]
                if not masks:
                    raise WebError(f"{path}: the page returned no confidence masks")
                np.save(row["confidence"], np.stack([m.reshape(record["height"], record["width"]) for m in masks], -1))
        else:
            row["scores"] = str(out / f"{path.stem}_scores.json")
            scores = {k: record[k] for k in ("scores", "probabilities", "top")}
            (out / f"{path.stem}_scores.json").write_text(json.dumps({"classes": info["classes"], **scores}, indent=2) + "\n")
        rows.append(row)
    timed = [r["median_ms"] for r in rows if r["median_ms"] is not None]
    report = {"model": str(model), "reader": info["reader"], "browser": f"Chromium {version} (headless, WebAssembly, CPU)",
              "packages": info["packages"], "images": rows, "outside_requests": outside,
              "median_ms": statistics.median(timed) if timed else None}
    from keras_litenext.utils import write_json

    write_json(out / "web_check.json", report)
    if outside:
        raise WebError(f"{info['source_file']}: the page asked for {len(outside)} address(es) outside 127.0.0.1, e.g. {outside[0]}")
    return report
