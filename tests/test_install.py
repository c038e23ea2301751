"""The package as a user installs it: a wheel built with `python -m build`, installed into a fresh
virtual environment outside the repository, run through its installed `keras-litenext` command
(fit on the bundled sample, evaluate, predict, export) from a folder that is not the clone.

The fresh environment sees the test environment's third-party packages through a `.pth` path
file (TensorFlow is not installed twice), never the clone: the test checks that the package it
runs is the wheel's copy in the new environment. The packages of the optional extras (and
MediaPipe) are hidden from the commands by a second `.pth` file, so fit → export is shown to need
the base install only; MediaPipe is then shown the int8 file in a process of its own."""

import _ctypes
import json
import os
import pathlib
import shutil
import site
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
VERBS = ("fit", "evaluate", "predict", "export", "benchmark", "web")
# importable only through an extra (or, for MediaPipe, the checks of the test suite): hidden from
# the installed commands, as on a base install
EXTRAS = ("mediapipe", "jax", "pydicom", "nibabel", "sklearn", "hypothesis", "mkdocs", "apache_beam", "playwright")
HIDE = "KERAS_LITENEXT_TEST_HIDE_EXTRAS"


def _run(cmd, cwd, timeout=900, extras=False):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", HIDE)}
    env.update(TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="", **({} if extras else {HIDE: "1"}))
    result = subprocess.run([str(c) for c in cmd], check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(map(str, cmd))} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """`(bin folder, work folder)` of a fresh venv holding the wheel of this checkout."""
    tmp = tmp_path_factory.mktemp("install")
    dist, source = tmp / "dist", tmp / "source"
    # build from a copy of the tracked tree, so the clone gets no build/ or egg-info folders
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    _run([sys.executable, "-m", "build", "--wheel", "--outdir", dist, source], cwd=tmp)
    wheels = sorted(dist.glob("keras_litenext-*.whl"))
    assert len(wheels) == 1, wheels
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", venv], cwd=tmp)
    python = venv / "bin" / "python"
    purelib = pathlib.Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp).stdout.strip())
    outer = [p for p in site.getsitepackages() + [site.getusersitepackages()] if os.path.isdir(p)]
    (purelib / "outer_environment.pth").write_text("\n".join(outer) + "\n")
    # a .pth line starting with "import" runs at start-up: a None in sys.modules makes the import fail
    (purelib / "zz_hide_extras.pth").write_text(
        f"import os, sys; os.environ.get({HIDE!r}) and sys.modules.update(dict.fromkeys({EXTRAS!r}))\n")
    _run([python, "-m", "pip", "install", "--no-deps", "--no-index", wheels[0]], cwd=tmp)
    work = tmp / "work"
    work.mkdir()
    where = _run([python, "-c", "import keras_litenext; print(keras_litenext.__file__)"], cwd=work).stdout.strip()
    assert pathlib.Path(where).is_relative_to(purelib), f"imported {where}, not the wheel's copy"
    return venv / "bin", work


def test_wheel_command_helps(installed):
    bin_dir, work = installed
    assert "fit" in _run([bin_dir / "keras-litenext", "--help"], cwd=work).stdout
    assert _run([bin_dir / "python", "-m", "keras_litenext", "--version"], cwd=work).stdout.startswith("keras-litenext ")
    # every verb's --help in one process (each verb's own start-up is run by the next test)
    code = ("import contextlib, io, json, sys; from keras_litenext.cli import main\n"
            "usage = {}\n"
            "for verb in sys.argv[1:]:\n"
            "    out = io.StringIO()\n"
            "    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit): main([verb, '--help'])\n"
            "    usage[verb] = out.getvalue().splitlines()[0]\n"
            "print(json.dumps(usage))\n")
    usage = json.loads(_run([bin_dir / "python", "-c", code, *VERBS], cwd=work).stdout.splitlines()[-1])
    assert list(usage) == list(VERBS)
    for verb, line in usage.items():
        assert line.startswith(f"usage: keras-litenext {verb}"), (verb, line)


def test_extras_are_hidden_from_the_commands(installed):
    bin_dir, work = installed
    probe = "import mediapipe; print(mediapipe.__name__)"
    hidden = subprocess.run([bin_dir / "python", "-c", probe], check=False, cwd=work, capture_output=True, text=True,
                            env={**os.environ, HIDE: "1"})
    assert hidden.returncode != 0 and "mediapipe" in hidden.stderr, hidden
    assert _run([bin_dir / "python", "-c", probe], cwd=work, extras=True).stdout.strip() == "mediapipe"


def test_one_opencv():
    """Exactly one distribution provides cv2 (the headless one), with the test extra installed."""
    from importlib import metadata

    names = sorted({d.metadata["Name"].lower() for d in metadata.distributions() if d.metadata["Name"].lower().startswith("opencv")})
    assert names == ["opencv-python-headless"], names


def test_wheel_command_fits_evaluates_predicts_and_exports(installed):
    bin_dir, work = installed
    command = bin_dir / "keras-litenext"
    _run([command, "fit", "--epochs", "1", "--image-size", "48", "--batch-size", "32", "--output", "run"], cwd=work)
    run = work / "run"
    for name in ("best.keras", "config.json", "metrics.json", "splits.json", "history.csv"):
        assert (run / name).is_file(), name
    evaluated = _run([command, "evaluate", "run", "--json", "eval.json"], cwd=work)
    assert json.loads((work / "eval.json").read_text())["dice"]["mean"] >= 0, evaluated.stdout
    sample = pathlib.Path(_run([bin_dir / "python", "-c", "from keras_litenext.data import sample_data_dir; print(sample_data_dir())"],
                               cwd=work).stdout.strip())
    assert sample.is_relative_to(work.parent / "venv"), sample
    images = work / "images"
    images.mkdir()
    for path in sorted((sample / "images").iterdir())[:3]:
        shutil.copy2(path, images / path.name)
    _run([command, "predict", "run", "images", "--output", "predictions"], cwd=work)
    assert len([p for p in (work / "predictions").rglob("*.png")]) >= 3
    _run([command, "export", "run", "--kinds", "int8", "--qat-epochs", "0", "--qat-retries", "0", "--calibration-images", "16", "--force"], cwd=work)
    files = list((run / "tflite").glob("*int8*.tflite"))
    assert len(files) == 1 and files[0].stat().st_size > 100_000, files
    assert json.loads((run / "tflite" / "report.json").read_text())["files"]
    # the file as it came out of the base install, in MediaPipe's ImageSegmenter (a process of its own)
    check = ("import sys, numpy as np; from keras_litenext.export.metadata import check_mediapipe\n"
             "pixels = np.random.default_rng(0).integers(0, 256, (2, 48, 48, 3), dtype=np.uint8)\n"
             "result = check_mediapipe(sys.argv[1], pixels, 'segmentation')\n"
             "print(result['category'].shape, result['labels'])\n")
    out = _run([bin_dir / "python", "-c", check, files[0]], cwd=work, extras=True).stdout
    assert out.startswith("(2, 48, 48)"), out


# shared libraries of a desktop (OpenGL, X11) that a minimal Linux image lacks: a package that
# loads one at import fails there with "libGL.so.1: cannot open shared object file"
DESKTOP_LIBRARIES = ("libGL.so", "libGLX", "libEGL", "libX11", "libxcb.so", "libgthread")
IMPORTS = ("import keras_litenext, cv2, tensorflow, keras; from ai_edge_litert import interpreter\n"
           "from keras_litenext import litert, export, inference, data, train\n")


def test_import_loads_no_desktop_library(installed):
    """`import keras_litenext` (and the stack it runs on: cv2, TensorFlow, LiteRT) maps no OpenGL or
    X11 library into the process, so it works on a minimal Linux image without libGL. Any library a
    package loads shows in the process's memory map, whether or not this machine has it: the same
    process then loads a shared object copied under libGL's name, which the check must see."""
    bin_dir, work = installed
    fake = work / "libGL.so.1"
    shutil.copy2(_ctypes.__file__, fake)
    code = IMPORTS + (
        "import ctypes, json\n"
        "def desktop():\n"
        "    names = {line.split()[-1] for line in open('/proc/self/maps') if len(line.split()) > 5}\n"
        f"    return sorted(n for n in names if any(lib in n for lib in {DESKTOP_LIBRARIES!r}))\n"
        "before = desktop()\n"
        f"ctypes.CDLL({str(fake)!r})\n"
        "print(json.dumps([before, desktop()]))\n")
    before, after = json.loads(_run([bin_dir / "python", "-c", code], cwd=work).stdout.strip().splitlines()[-1])
    assert before == [], before
    assert after == [str(fake)], after
