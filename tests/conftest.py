import os
import pathlib
import subprocess
import sys
import tempfile
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
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False  # keep FILE_SECONDS' order (pytest-xdist reorders by test count)
    # JAX's persistent compilation cache, shared by every JAX process the tests start (both xdist
    # workers included): creating a model under JAX compiles one random-initialiser program per
    # weight shape, ~50 s for one family on 2 busy cores, ~8 s once cached
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "keras-litenext-tests-jax-cache"))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


# -- the order in which `-n 2 --dist loadfile` hands out the test files ------------------------------
# Slowest first (seconds of one file on a busy 2-core machine, pytest --durations, 2026-12-07), so
# that no long file starts last while the other worker sits idle. pytest-xdist's own order is by
# number of tests, which put the slowest file, test_training.py, near the end. Order only: no test
# depends on it.
FILE_SECONDS = {"test_training.py": 609, "test_export.py": 400, "test_distributed.py": 350, "test_model_contract.py": 346,
                "test_install.py": 276, "test_batch.py": 200, "test_cli_quiet.py": 175, "test_reliability.py": 165,
                "test_docs.py": 155, "test_losses.py": 78, "test_mednext.py": 77, "test_benchmarks.py": 77,
                "test_quantization.py": 75, "test_beam.py": 72, "test_medical.py": 54, "test_web.py": 46}


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: -FILE_SECONDS.get(item.path.name, 0))  # stable: a file's tests keep their order


# LLVM at -O0 for the JAX processes the tests start: a test's JAX programs are mostly compiled, not
# run (creating a model compiles one random-initialiser program per weight shape), and -O0 compiles
# about 3x faster; the computations compared are the same XLA programs
JAX_TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"


def run_python(code, backend="jax", args=(), cwd=None, timeout=600, env=None):
    """Run `code` (dedented) in a fresh Python process on a Keras backend, with the clone and
    `tests/` on its path (so `import keras_litenext` and `from conftest import ...` work there).
    A backend is chosen when Keras is first imported, so another backend needs its own process.
    `env`: more environment variables. Returns the `subprocess.CompletedProcess` (text output captured)."""
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3", **(env or {}))
    if backend == "jax":
        env["JAX_PLATFORMS"] = "cpu"
        env.setdefault("XLA_FLAGS", JAX_TEST_XLA_FLAGS)
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
