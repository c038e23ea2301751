"""The documentation builds without a warning, and every Python example in it runs.

(a) `mkdocs build --strict` into a temporary folder: a broken link, a missing page, an API
    object that cannot be found, or any other warning fails the test.
(b) Every ```python block of README.md and docs/**/*.md runs: the blocks of one page, in order,
    in one fresh Python process (cwd a temporary folder, TF_CPP_MIN_LOG_LEVEL=3), so a later
    block sees the names of an earlier one. ```bash and other blocks are not run.
"""

import concurrent.futures
import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^\n`]*)$")
TIMEOUT_S = 300


def python_blocks(text):
    """The ```python blocks of a Markdown text, in order: `[(first line number, code), ...]`."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        fence, info, indent = match["fence"], match["info"].strip(), len(match["indent"])
        start, body, i = i + 1, [], i + 1
        while i < len(lines) and not re.match(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$", lines[i]):
            body.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i])
            i += 1
        i += 1
        if info.split(" ")[0].split("{")[0].lower() == "python":
            blocks.append((start + 1, "\n".join(body) + "\n"))
    return blocks


def page_script(page):
    """One script that runs the page's blocks in order and names the block that failed."""
    blocks = python_blocks(page.read_text(encoding="utf-8"))
    if not blocks:
        return None
    parts = ["import sys as _docs_sys\n_docs_namespace = {'__name__': '__main__'}\n"]
    for line, code in blocks:
        where = f"{page.relative_to(ROOT)}, block at line {line}"
        parts.append(
            f"print({('--- ' + where)!r}, flush=True)\n"
            f"exec(compile({code!r}, {where!r}, 'exec'), _docs_namespace)\n"
        )
    return "".join(parts)


def run_page(page, tmp_path):
    script = page_script(page)
    folder = tmp_path / re.sub(r"[^A-Za-z0-9]+", "_", str(page.relative_to(ROOT)))
    folder.mkdir()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    result = subprocess.run([sys.executable, "-c", script], cwd=folder, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    return page, result


def test_python_blocks_parsed():
    text = "a\n```python\nx = 1\n```\n```bash\nls\n```\n    ```python\n    y = x\n    ```\n"
    assert python_blocks(text) == [(3, "x = 1\n"), (9, "y = x\n")]


def test_docs_build_strict(tmp_path):
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings_handlers") is None:
        pytest.skip("mkdocs / mkdocstrings are not installed (pip install -e '.[docs]')")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")]
    result = subprocess.run(command, cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=TIMEOUT_S)
    output = result.stdout + result.stderr
    warnings = [line for line in output.splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert result.returncode == 0 and not warnings, output[-5000:]
    assert (tmp_path / "site" / "api" / "models" / "index.html").is_file()


def test_python_examples_run(tmp_path):
    pages = [page for page in PAGES if python_blocks(page.read_text(encoding="utf-8"))]
    assert ROOT / "README.md" in pages
    failures = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        for page, result in pool.map(lambda page: run_page(page, tmp_path), pages):
            if result.returncode != 0:
                failures.append(f"{page.relative_to(ROOT)} (exit {result.returncode}):\n{(result.stdout + result.stderr)[-3000:]}")
    assert not failures, "\n\n".join(failures)
