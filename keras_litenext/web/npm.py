"""The npm packages of the page, fetched without Node: the lock file's tarballs, verified and cached.

`package.json` and `package-lock.json` beside this module pin each package to an exact version
with the registry's `integrity` (sha512). `vendor` downloads each tarball once from the address the
lock names (or from `$npm_config_registry`, a mirror), checks its sha512 against the lock, keeps it
in the cache (`$KERAS_LITENEXT_NPM_CACHE`, else `~/.cache/keras-litenext/npm`) and copies the few
files the page loads (`FILES`) into the page's `vendor/` folder. A tarball put in the cache by hand
is used as it is, so a machine without network builds the page too. A Node toolchain can check the
same pins: `npm ci` in this folder installs what the lock names.
"""

import base64
import hashlib
import json
import os
import pathlib
import shutil
import tarfile
import urllib.error
import urllib.request

HERE = pathlib.Path(__file__).resolve().parent
LOCK = HERE / "package-lock.json"
REGISTRY = "https://registry.npmjs.org/"
# the files of each package the page loads (paths inside the tarball's `package/` folder)
FILES = {
    "@mediapipe/tasks-vision": (
        "package.json",
        "vision_bundle.mjs",
        "wasm/vision_wasm_internal.js",
        "wasm/vision_wasm_internal.wasm",
        "wasm/vision_wasm_nosimd_internal.js",  # the loader picks these where WebAssembly SIMD is missing
        "wasm/vision_wasm_nosimd_internal.wasm",
    ),
}


class NpmError(RuntimeError):
    """A pinned package could not be fetched, verified or unpacked (one line, naming it)."""


def default_cache():
    """The tarball cache: `$KERAS_LITENEXT_NPM_CACHE`, else `~/.cache/keras-litenext/npm`."""
    return pathlib.Path(os.environ.get("KERAS_LITENEXT_NPM_CACHE") or pathlib.Path.home() / ".cache" / "keras-litenext" / "npm")


def pinned(lock=LOCK):
    """`{name: {"version", "resolved", "integrity"}}` of the packages the lock file pins."""
    data = json.loads(pathlib.Path(lock).read_text(encoding="utf-8"))
    found = {}
    for key, entry in data.get("packages", {}).items():
        if key.startswith("node_modules/"):
            found[key[len("node_modules/"):]] = {k: entry[k] for k in ("version", "resolved", "integrity")}
    return found


def _digest_ok(path, integrity):
    algorithm, _, expected = integrity.partition("-")
    if algorithm != "sha512":
        raise NpmError(f"{LOCK.name}: integrity {integrity[:20]}... is not sha512")
    h = hashlib.sha512()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return base64.b64encode(h.digest()).decode("ascii") == expected


def _url(entry):
    """The tarball's address: the lock's, on `$npm_config_registry` when that names a mirror."""
    mirror = os.environ.get("npm_config_registry") or os.environ.get("NPM_CONFIG_REGISTRY")
    if mirror and entry["resolved"].startswith(REGISTRY):
        return mirror.rstrip("/") + "/" + entry["resolved"][len(REGISTRY):]
    return entry["resolved"]


def tarball(name, entry, cache=None, timeout=120):
    """The verified tarball of a pinned package in the cache (downloaded once)."""
    cache = pathlib.Path(cache) if cache else default_cache()
    path = cache / f"{name.replace('/', '+')}-{entry['version']}.tgz"
    if path.is_file() and _digest_ok(path, entry["integrity"]):
        return path
    url = _url(entry)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        part = path.with_suffix(".part")
        with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as f:
            shutil.copyfileobj(response, f)
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        raise NpmError(f"{name}@{entry['version']}: could not download {url} ({getattr(err, 'reason', err)}); "
                       f"put the tarball at {path} or pass --npm-cache DIR") from None
    if not _digest_ok(part, entry["integrity"]):
        part.unlink()
        raise NpmError(f"{name}@{entry['version']}: {url} does not match the sha512 in {LOCK.name}; not used")
    os.replace(part, path)
    return path


def vendor(dest, cache=None):
    """Copy the files the page needs from each pinned package into `dest/<name>/`; returns
    `{name: version}`."""
    versions = {}
    for name, entry in pinned().items():
        wanted = FILES.get(name)
        if not wanted:
            continue
        target = pathlib.Path(dest) / name
        try:
            with tarfile.open(tarball(name, entry, cache), "r:gz") as archive:
                for member in wanted:
                    source = archive.extractfile(f"package/{member}")
                    if source is None:
                        raise KeyError(member)
                    (target / member).parent.mkdir(parents=True, exist_ok=True)
                    with source, open(target / member, "wb") as out:
                        shutil.copyfileobj(source, out)
        except (KeyError, tarfile.TarError) as err:
            raise NpmError(f"{name}@{entry['version']}: the tarball lacks {err} (see FILES in {__name__})") from None
        versions[name] = entry["version"]
    return versions
