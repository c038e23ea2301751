import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_fixture(name):
    """A reference fixture as (state_dict, NHWC input, NHWC reference output)."""
    state = dict(np.load(FIXTURES / name))
    x = state.pop("__input__").transpose(0, 2, 3, 1)
    y = state.pop("__output__").transpose(0, 2, 3, 1)
    return state, x, y


@pytest.fixture
def fixture_loader():
    return load_fixture


def pytest_configure(config):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def run_python(code, backend="jax", args=(), cwd=None, timeout=600):
    """Run `code` (dedented) in a fresh Python process on a Keras backend, with the clone and
    `tests/` on its path (so `import keras_litenext` and `from conftest import ...` work there).
    A backend is chosen when Keras is first imported, so another backend needs its own process.
    Returns the `subprocess.CompletedProcess` (text output captured)."""
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    if backend == "jax":
        env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests")] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


# -- a skip for a missing package fails CI ---------------------------------------------------------
# `.ci/run` installs the whole `test` extra (and MediaPipe, with --no-deps) and sets
# KERAS_LITENEXT_STRICT_SKIPS=1: a test skipped there because a package could not be imported would
# pass unseen, so the run fails instead.
_MISSING_PACKAGE = ("could not import", "not installed", "no module named")
_missing_skips = []


def missing_package_skip(reason):
    """Whether a skip reason says that a package is missing."""
    return any(text in str(reason).lower() for text in _MISSING_PACKAGE)


def pytest_runtest_logreport(report):
    if report.skipped and isinstance(report.longrepr, tuple) and missing_package_skip(report.longrepr[2]):
        _missing_skips.append(f"{report.nodeid}: {report.longrepr[2]}")


def pytest_sessionfinish(session, exitstatus):
    if _missing_skips and os.environ.get("KERAS_LITENEXT_STRICT_SKIPS") == "1" and not hasattr(session.config, "workerinput"):
        print("\nerror: tests skipped for a package the test extra installs:\n  " + "\n  ".join(_missing_skips), file=sys.stderr)
        session.exitstatus = 1
