"""The command starts quietly: TensorFlow's C++ start-up lines (absl's pre-init warning,
`cudart_stub`, `cpu_feature_guard`, `cuInit`) stay out of its output unless `--verbose` is given;
the script shims go through the same start-up."""

import os
import subprocess
import sys

from keras_litenext.notes import NOISE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*argv):
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "GRPC_VERBOSITY", "GLOG_minloglevel")}
    result = subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    return result.returncode, result.stdout + result.stderr


def noise(text):
    return [line for line in text.splitlines() if any(n in line for n in NOISE)]


def test_command_output_has_no_tensorflow_start_up_lines():
    rc, out = run("-m", "keras_litenext", "fit", "--help")
    assert rc == 0 and "--epochs" in out and not noise(out), noise(out)
    rc, out = run("training/fit.py", "--epochs", "0")  # a shim; refused when parsed, after the package loaded
    assert rc == 2 and "argument --epochs" in out and not noise(out), noise(out)
    assert len(out.strip().splitlines()) == 1, out  # the one line naming the flag, nothing else


def test_verbose_lets_them_through():
    rc, out = run("training/fit.py", "--epochs", "0", "--verbose")
    assert rc == 2
    if not noise(out):  # then TensorFlow prints none on this machine at all
        assert not noise(run("-c", "import tensorflow")[1])


def test_verbose_zero_is_not_verbose():
    """export's `--verbose 0` (Keras' verbosity: less output) does not let TensorFlow's lines through."""
    from keras_litenext.cli import verbose_asked

    assert verbose_asked(["fit", "--verbose"]) and verbose_asked(["export", "run", "--verbose", "2"])
    assert verbose_asked(["export", "run", "--verbose=1"])
    assert not verbose_asked(["export", "run", "--verbose", "0"]) and not verbose_asked(["export", "--verbose=0"])
    assert not verbose_asked(["fit", "--epochs", "3"])


def test_litert_delegate_line_stays_out_of_a_command(tmp_path):
    """LiteRT's "Created TensorFlow Lite XNNPACK delegate for CPU." (printed when the first
    interpreter is made, long after start-up) is caught in a command; a library user's process
    (no command) still sees it."""
    import shutil

    from keras_litenext.presets import preset_metadata

    shutil.copy(os.path.join(preset_metadata("litenext-nuclei")["path"], "tflite", "litenext_int8.tflite"), tmp_path)
    args = ("-m", "keras_litenext", "benchmark", str(tmp_path), "--no-keras", "--threads", "1", "--runs", "1", "--rounds", "1",
            "--warmup", "1")
    rc, out = run(*args)
    assert rc == 0 and "litenext_int8.tflite" in out and not noise(out), noise(out)
    rc, out = run("-c", f"from keras_litenext.litert.runtime import TFLiteRunner; TFLiteRunner({str(tmp_path / 'litenext_int8.tflite')!r})")
    assert rc == 0 and any("XNNPACK delegate" in line for line in noise(out)), out[-2000:]
