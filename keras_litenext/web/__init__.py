"""The browser: a static page that runs an exported `.tflite` file with MediaPipe Tasks for the web.

- `build`: the page's folder for one file (`build_page`) and a local server (`serve`);
- `card`: the file's TFLite metadata and export report as the page's `model.json` (`read_card`);
- `npm`: the pinned npm packages (`package-lock.json` beside this module), fetched without Node,
  verified against their sha512 and cached (`vendor`);
- `check`: the page in headless Chromium through Python Playwright (`check_page`, `BrowserPage`).

The page itself (`page/`: `index.html`, `app.mjs`, `style.css`) is plain HTML and one ES module,
with no build step. `keras-litenext web` (`keras_litenext.cli.web`) is the command.
"""

from keras_litenext.web.build import WebError, build_page, resolve_model, serve
from keras_litenext.web.card import CardError, read_card
from keras_litenext.web.check import BrowserPage, check_page, find_browser, missing
from keras_litenext.web.npm import NpmError, default_cache, vendor

__all__ = ["BrowserPage", "CardError", "NpmError", "WebError", "build_page", "check_page", "default_cache", "find_browser",
           "missing", "read_card", "resolve_model", "serve", "vendor"]
