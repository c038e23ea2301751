"""The package as a user installs it: a wheel built with `python -m build`, installed into a fresh
virtual environment outside the repository, run through its installed `keras-litenext` command
(fit on the bundled sample, evaluate, predict, export) from a folder that is not the clone.

The fresh environment sees the test environment's third-party packages through a `.pth` path
file (TensorFlow is not installed twice), never the clone: the test checks that the package it
runs is the wheel's copy in the new environment."""

import json
import os
import pathlib
import shutil
import site
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
VERBS = ("fit", "evaluate", "predict", "export", "benchmark")


def _run(cmd, cwd, timeout=900):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
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
    _run([python, "-m", "pip", "install", "--no-deps", "--no-index", wheels[0]], cwd=tmp)
    work = tmp / "work"
    work.mkdir()
    where = _run([python, "-c", "import keras_litenext; print(keras_litenext.__file__)"], cwd=work).stdout.strip()
    assert pathlib.Path(where).is_relative_to(purelib), f"imported {where}, not the wheel's copy"
    return venv / "bin", work


def test_wheel_command_helps(installed):
    bin_dir, work = installed
    assert "fit" in _run([bin_dir / "keras-litenext", "--help"], cwd=work).stdout
    for verb in VERBS:
        out = _run([bin_dir / "keras-litenext", verb, "--help"], cwd=work).stdout
        assert out.startswith(f"usage: keras-litenext {verb}"), out[:200]
    assert _run([bin_dir / "python", "-m", "keras_litenext", "--version"], cwd=work).stdout.startswith("keras-litenext ")


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
    _run([command, "export", "run", "--kinds", "int8", "--qat-epochs", "0", "--calibration-images", "16", "--force"], cwd=work)
    files = list((run / "tflite").glob("*int8*.tflite"))
    assert len(files) == 1 and files[0].stat().st_size > 100_000, files
    assert json.loads((run / "tflite" / "report.json").read_text())["files"]
