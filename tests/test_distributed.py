"""Training in several processes: `keras-litenext fit` on JAX's distributed runtime, 2 CPU processes
on 127.0.0.1 against 1 process with the same global batch (8), seed and data order.

Tolerance: the per-epoch training and validation losses agree within `LOSS_RTOL` (relative).
Measured on a 2-core machine (jax 0.10.2, keras 3.15.1): here (24 pairs at 32x32, a width-8
LiteNeXt) the numbers are the same (difference 0); on the whole bundled sample (240 training
images at 96x96, the default LiteNeXt, 3 epochs) at most 9e-8 (training) and 3.4e-7
(validation). A perturbation is far outside it: the epochs after a resume, which see another data
order, move the training loss by 6e-3 to 9e-2 (the validation loss by 4e-5).

The processes share JAX's persistent compilation cache (a folder of this module), so a launch
compiles only the programs no earlier launch compiled.
"""

import csv
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
from conftest import JAX_TEST_XLA_FLAGS

from keras_litenext.data import sample_data_dir
from keras_litenext.train import distributed
from keras_litenext.train.distributed import ENV, Launch, join, launch_from

pytest.importorskip("jax")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOSS_RTOL = 1e-5
HANG_S = 90  # a survivor still running this long after its peer is killed hangs (a hang guard, not a speed goal)
EPOCHS = 4  # the group is killed after epoch 2: the 2 left leave time for the kill to land mid-run


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """24 pairs of the bundled sample, a tiny LiteNeXt's settings and a compilation cache."""
    root = tmp_path_factory.mktemp("distributed")
    sample = sample_data_dir()
    for part in ("images", "masks"):
        os.makedirs(root / "data" / part)
    for name in sorted(os.listdir(os.path.join(sample, "images")))[:24]:
        for part in ("images", "masks"):
            shutil.copy(os.path.join(sample, part, name), root / "data" / part / name)
    (root / "settings.json").write_text('{"model_kwargs": {"width": 8}, "mwl_kernel": 3}')
    return root


def start(setup, out, count, seed=42, epochs=EPOCHS, extra=()):
    """The fit command in `count` processes (a group when `count` > 1); each runs in its own empty
    folder, so anything a process writes outside the run folder shows. Returns the `Popen`s."""
    port = free_port()
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT,
               JAX_COMPILATION_CACHE_DIR=str(setup / "jax-cache"), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               XLA_FLAGS=JAX_TEST_XLA_FLAGS)
    for name in ENV.values():
        env.pop(name, None)
    procs = []
    for index in range(count):
        cwd = setup / f"{os.path.basename(out)}-cwd{index}"
        cwd.mkdir(exist_ok=True)
        group = ["--coordinator-address", f"127.0.0.1:{port}", "--num-processes", str(count), "--process-id", str(index)] if count > 1 else []
        cmd = [sys.executable, "-m", "keras_litenext", "fit", "--data", str(setup / "data"), "--output", str(out), "--image-size", "32",
               "--epochs", str(epochs), "--batch-size", "8", "--seed", str(seed), "--quiet", "--config", str(setup / "settings.json"),
               *group, *extra]
        procs.append(subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def finish(procs, timeout=600):
    """`[(returncode, stdout, stderr), ...]` of processes that must all end."""
    results = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
        results.append((proc.returncode, out, err))
    return results


def losses(run, column="loss"):
    with open(os.path.join(run, "history.csv"), newline="") as f:
        return [float(row[column]) for row in csv.DictReader(f)]


def test_launch_settings_come_from_the_flags_or_keras_variables():
    env = {ENV["coordinator"]: "10.0.0.1:1234,10.0.0.2:2345", ENV["count"]: "2", ENV["index"]: "1"}
    assert launch_from(environ=env) == Launch("10.0.0.1:1234", 2, 1)  # Keras' form: the first address is the coordinator
    assert launch_from("127.0.0.1:5000", 3, 2, environ=env) == Launch("127.0.0.1:5000", 3, 2)  # flags over variables
    assert launch_from(environ={}) is None and launch_from("h:1", 1, 0, environ={}) is None  # one process: a plain run
    with pytest.raises(ValueError, match="missing: --process-id"):
        launch_from("127.0.0.1:5000", 2, environ={})
    with pytest.raises(ValueError, match="--process-id 2: must be 0 to 1"):
        launch_from("127.0.0.1:5000", 2, 2, environ={})
    with pytest.raises(ValueError, match="HOST:PORT"):
        launch_from("127.0.0.1", 2, 0, environ={})
    with pytest.raises(ValueError, match=ENV["index"]):
        launch_from(environ={**env, ENV["index"]: "one"})


def test_a_group_needs_the_jax_backend():
    import keras

    if keras.backend.backend() == "jax":
        pytest.skip("checks the refusal of another backend")
    with pytest.raises(ValueError, match="KERAS_BACKEND=jax"):
        join(Launch("127.0.0.1:1", 2, 0))


def test_the_runtime_ending_a_process_shows_as_one_line():
    """When process 0 dies the runtime ends the others itself (a fatal log line and a stack trace,
    from a C++ thread); the command's stderr filter makes that one line."""
    text = ("a warning of the trainer\n"
            "E1207 17:23:58.728135 15476 coordination_service_agent.cc:289] Polled an error from coordination service\n"
            f"F1207 17:23:58.728200 15476 client.h:80] {distributed._FATAL}. This most likely indicates that another task died\n"
            "*** Check failure stack trace: ***\n    @     0x7fd49f840634  absl::log_internal::LogMessage::SendToLog()\n")
    line = "error: process 0 (the coordinator at 127.0.0.1:1) is gone, so process 1 of 2 stops too"
    ended = subprocess.run([sys.executable, "-c", distributed._FILTER, distributed._FATAL, line, *distributed._RUNTIME_LOG],
                           input=text, capture_output=True, text=True, timeout=60, check=True)
    assert ended.stdout.splitlines() == ["a warning of the trainer", line]


def test_two_processes_train_as_one_stop_together_and_resume(setup):
    """One group run does it all (each launch compiles): it is killed after its 2nd of 4 epochs,
    those 2 epochs are compared with one process's, then the group resumes and finishes."""
    single, run = setup / "single", setup / "group"
    reference = start(setup, single, 1, epochs=EPOCHS)
    (code, out, err), = finish(reference)
    assert code == 0, out[-2000:] + err[-3000:]

    procs = start(setup, run, 2, epochs=EPOCHS)
    deadline = time.time() + 600
    while not (run / "backup" / "epoch-0002.weights.h5").exists() and all(p.poll() is None for p in procs) and time.time() < deadline:
        time.sleep(0.05)
    assert all(p.poll() is None for p in procs), "the group ended before it could be killed:\n" + procs[0].stderr.read()[-3000:]
    procs[1].send_signal(signal.SIGKILL)
    (code, out, err), _ = finish(procs, timeout=HANG_S)  # raises TimeoutExpired if the survivor hangs
    errors = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(errors) == 1, err[-3000:]
    assert errors[0].startswith("error: another process of the group stopped, so process 0 of 2 stops too") and "--resume" in errors[0]
    assert "Training in 2 processes on 2 devices: global batch 8, 4 per process" in out
    done = max(int(p.name.split("-")[1].split(".")[0]) for p in (run / "backup").glob("epoch-*.weights.h5"))
    assert done in (2, 3) and not (run / "metrics.json").exists()

    # the loss curve of the 2 epochs (training and validation) is one process's
    for column in ("loss", "val_loss"):
        assert losses(run, column)[:2] == pytest.approx(losses(single, column)[:2], rel=LOSS_RTOL), column

    results = finish(start(setup, run, 2, epochs=EPOCHS, extra=["--resume"]))
    for code, out, err in results:
        assert code == 0, out[-2000:] + err[-3000:]
    out = results[0][1]
    assert f"after epoch {done} of {EPOCHS}" in out and f"Epoch {done + 1}/{EPOCHS}" in out and "Epoch 1/" not in out
    assert "Process 1 of 2: done" in results[1][1]
    assert [int(e) for e in losses(run, "epoch")] == list(range(EPOCHS)) and (run / "metrics.json").exists()
    # the comparison can fail: the resumed epochs see another data order (a new pipeline starts
    # at its first shuffle), and their loss is further from the uninterrupted run's than the tolerance
    assert losses(run)[done:] != pytest.approx(losses(single)[done:], rel=LOSS_RTOL)

    # process 0 alone wrote, into the run folder only
    assert {"best.keras", "metrics.json", "history.csv", "splits.json", "config.json", "model_card.md"} <= set(os.listdir(run))
    assert not os.listdir(setup / "group-cwd0") and not os.listdir(setup / "group-cwd1")
    assert sorted(p.name for p in setup.iterdir() if p.name.startswith("group")) == ["group", "group-cwd0", "group-cwd1"]
