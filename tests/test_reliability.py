"""What happens when things go wrong: every CLI flag checked at parse time, file-system faults,
kill-anywhere resume, one writer per run folder, and the edge cases of prediction and data.

Small on purpose: a 16-pair subset of the bundled dsb2018_96 sample trained at 32x32 for 2
epochs; subprocesses only where a process must be killed."""

import argparse
import contextlib
import csv
import errno
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings
import zipfile
from importlib.machinery import SourceFileLoader

import cv2
import keras
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import keras_litenext as kl
from keras_litenext import data as data_lib
from keras_litenext.cli import args as cli
from keras_litenext.runs import Run, RunError, load_model_file
from keras_litenext.train import NonFiniteLossError, TrainConfig, build_datasets, train
from keras_litenext.utils import OutputError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(model="tinyseg", image_size=32, batch_size=4, verbose=0, mwl_kernel=3, epochs=2)
TEMPORARY = re.compile(r"^\..+\.tmp(\..*)?$")
TINYSEG = textwrap.dedent('''
    import keras
    from keras_litenext.models import registry


    def tinyseg(input_shape=(32, 32, 3), num_classes=1, weights=None, name="tinyseg"):
        """Conv (stride 2) - Conv - bilinear UpSampling2D - 1x1 Conv: a segmenter that traces in seconds."""
        inputs = keras.Input(input_shape)
        x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(inputs)
        x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
        x = keras.layers.UpSampling2D(2, interpolation="bilinear")(x)
        return keras.Model(inputs, keras.layers.Conv2D(num_classes, 1)(x), name=name)


    if "tinyseg" not in registry.list_models():
        registry.register_model(registry.ModelSpec("tinyseg", tinyseg, size_multiple=2, default_input_shape=(32, 32, 3)))
''')


@pytest.fixture(scope="module", autouse=True)
def tiny_segmenter():
    """`tinyseg` in the registry while this module runs (the kill tests' processes register it too)."""
    from keras_litenext.models import registry

    exec(compile(TINYSEG, "tinyseg", "exec"), {})
    yield
    registry._SPECS.pop("tinyseg", None)


def load_cli(path):
    """A command-line script as a module; a script that is a shim over a `keras_litenext.cli`
    command gives that command's module (its parser and `main`)."""
    name = "cli_" + os.path.splitext(os.path.basename(path))[0]
    module = SourceFileLoader(name, os.path.join(ROOT, path)).load_module()
    return sys.modules.get(getattr(module.main, "__module__", None), module)


def parser_of(module):
    """The argparse parser of a command (`build_parser`; `parser` in the scripts not yet moved)."""
    return (getattr(module, "build_parser", None) or module.parser)()


def subset(folder, n=16):
    """The first n pairs of the bundled 96x96 nuclei sample."""
    source = data_lib.sample_data_dir()
    for sub in ("images", "masks"):
        os.makedirs(folder / sub)
    for name in sorted(os.listdir(os.path.join(source, "images")))[:n]:
        for sub in ("images", "masks"):
            shutil.copy(os.path.join(source, sub, name), folder / sub / name)
    return folder


@pytest.fixture(scope="module")
def dsb16(tmp_path_factory):
    return subset(tmp_path_factory.mktemp("dsb16") / "data")


def read_history(run):
    with open(os.path.join(run, "history.csv"), newline="") as f:
        return list(csv.DictReader(f))


def leftovers(run):
    """Temporaries of interrupted writes anywhere in a run folder."""
    return [os.path.join(d, n) for d, _, files in os.walk(run) for n in files if TEMPORARY.match(n)]


def assert_best_is_best_validation_epoch(run_dir):
    run = Run.open(run_dir)
    val = [float(r["val_dice"]) for r in read_history(run_dir)]
    model = run.load_model()
    model.compile(metrics=run.task.metrics())
    _, val_ds = build_datasets(run.config, run.arrays())
    assert model.evaluate(val_ds, verbose=0, return_dict=True)["dice"] == pytest.approx(max(val), abs=1e-5)


def run_main(module, argv):
    """`(status, stderr)` of a CLI's main: SystemExit codes and return values alike."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            status = module.main(argv)
        except SystemExit as exit_:
            status = exit_.code
    return status, err.getvalue()


# ---------------------------------------------------------------------------------------------
# Every CLI argument validated at parse time
# ---------------------------------------------------------------------------------------------

CLIS = ("training/fit.py", "training/predict.py", "training/evaluate.py", "tflite/convert.py", "tflite/benchmark.py")
_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\0\n\r"), min_size=1, max_size=12)


def _number_text(values):
    return values.map(lambda v: repr(v) if isinstance(v, float) else str(v))


def invalid_values(action, tmp):
    """A hypothesis strategy of values `action` must refuse."""
    kind = action.type
    if action.nargs == 0:  # a switch: a value is an error
        return _TEXT.map(lambda v: ("=", v.replace("-", "x")))
    if action.choices is not None:
        def allowed(v):
            try:
                return (kind(v) if kind else v) in action.choices
            except (TypeError, ValueError, argparse.ArgumentTypeError):
                return False

        return st.one_of(_TEXT, _number_text(st.integers())).filter(lambda v: not allowed(v))
    if isinstance(kind, cli.int_range):
        outside = []
        if kind.low is not None:
            outside.append(st.integers(max_value=kind.low - 1))
        if kind.high is not None:
            outside.append(st.integers(min_value=kind.high + 1))
        return st.one_of(*[_number_text(s) for s in outside], st.sampled_from(["1.5", "abc", "nan", "", "1e3x"]))
    if isinstance(kind, cli.float_range):
        outside = [st.sampled_from([float("nan"), float("inf"), float("-inf")])]
        if kind.low != -float("inf"):
            outside.append(st.floats(max_value=kind.low, allow_nan=False).filter(
                lambda f: f < kind.low or (kind.low_open and f == kind.low)))
        if kind.high != float("inf"):
            outside.append(st.floats(min_value=kind.high, allow_nan=False).filter(
                lambda f: f > kind.high or (kind.high_open and f == kind.high)))
        return st.one_of(*[_number_text(s) for s in outside], st.sampled_from(["abc", "", "0x1g"]))
    if isinstance(kind, cli.floats):
        bad_item = st.lists(st.floats(max_value=kind.low, allow_nan=False).filter(lambda f: f < kind.low), min_size=1, max_size=3)
        wrong = [bad_item.map(lambda v: ",".join(map(repr, v))), st.sampled_from(["a,b,c", "", ",", "nan,0,1"])]
        if kind.count:
            wrong.append(st.integers(1, 6).filter(lambda n: n != kind.count).map(lambda n: ",".join(["0.1"] * n)))
        if kind.total is not None:
            wrong.append(st.just(",".join(["0.5"] * (kind.count or 3))))
        return st.one_of(*wrong)
    if isinstance(kind, cli.names):
        missing = ",".join(c for c in kind.choices if c not in kind.required) or "x"
        return st.one_of(_TEXT.filter(lambda v: any(p.strip() not in kind.choices for p in v.split(","))), st.just(missing))
    if isinstance(kind, cli.suffix):
        return _TEXT.map(lambda v: v.replace("\0", "") + "/" + v)
    if kind is cli.output_path:
        existing = tmp / "a file"
        existing.write_text("x")
        return st.just(str(existing))
    if kind in (cli.existing_path, cli.existing_file, cli.existing_dir):
        values = _TEXT.map(lambda v: str(tmp / "missing" / ("m" + v.replace("/", "_"))))
        if kind is cli.existing_dir:
            (tmp / "a file").write_text("x")
            values = st.one_of(values, st.just(str(tmp / "a file")))
        return values
    if kind in (None, str, int, float):
        raise AssertionError(f"{action.option_strings or action.dest} takes unchecked values (type={kind!r}): "
                             "give it a keras_litenext.cli.args type or a checking type of its own")

    def refused(v):  # a flag's own checking type (fit.py --model, --intensity): what it refuses
        try:
            kind(v)
        except (TypeError, ValueError, argparse.ArgumentTypeError):
            return True
        return False

    return st.one_of(_TEXT, _TEXT.map(lambda v: "no-such-" + v)).filter(refused)


def _base_argv(module_path, tmp):
    """Valid positionals for a CLI (the flag under test fails first)."""
    model = tmp / "model.keras"
    model.write_bytes(b"")
    return {
        "training/fit.py": [],
        "training/predict.py": [str(model), str(tmp)],
        "training/evaluate.py": [str(model)],
        "tflite/convert.py": [str(model)],
        "tflite/benchmark.py": [str(tmp)],
    }[module_path]


@pytest.mark.parametrize("path", CLIS)
def test_every_flag_refuses_bad_values_in_one_line_naming_it(path, tmp_path_factory):
    """Property: for every argument of every CLI, any value outside its domain exits with
    status 2 (argparse) before any work, with one line naming the argument and no traceback."""
    module = load_cli(path)
    tmp = tmp_path_factory.mktemp("cli")
    actions = [a for a in parser_of(module)._actions if not isinstance(a, argparse._HelpAction)]
    strategies = {a.dest: invalid_values(a, tmp) for a in actions}  # raises for an unchecked argument
    base = _base_argv(path, tmp)
    positionals = [a for a in actions if not a.option_strings]
    walked = set()

    @settings(max_examples=int(os.environ.get("CLI_EXAMPLES", "12")), deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(st.data())
    def check(data):
        for action in actions:
            value = data.draw(strategies[action.dest], label=action.dest)
            if action.option_strings:
                flag = action.option_strings[-1]
                argv = base + ([f"{flag}={value[1]}"] if isinstance(value, tuple) else [f"{flag}={value}"])
                name = flag
            else:
                if value.startswith("-"):
                    value = "./" + value
                argv = list(base)
                argv[positionals.index(action)] = value
                name = action.dest
            status, err = run_main(module, argv)
            assert status == 2, f"{path} {argv}: exit {status}\n{err}"
            assert name in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, f"{path} {argv}: {err}"
            walked.add(action.dest)

    check()
    assert walked == {a.dest for a in actions}


def test_zero_and_negative_values_no_longer_mean_default(tmp_path):
    """Finding 1: --image-size 0 and --epochs 0 were silently the defaults, --epochs -1 a Keras
    error about decay_steps, --max-dice-drop -5 accepted."""
    fit, convert = load_cli("training/fit.py"), load_cli("tflite/convert.py")
    for argv, flag in ((["--image-size", "0"], "--image-size"), (["--epochs", "0"], "--epochs"),
                       (["--epochs", "-1"], "--epochs"), (["--lr", "nan"], "--lr")):
        status, err = run_main(fit, argv + ["--output", str(tmp_path / "run")])
        assert status == 2 and f"argument {flag}" in err and "Traceback" not in err, err
    status, err = run_main(convert, [str(tmp_path), "--max-dice-drop", "-5"])
    assert status == 2 and "argument --max-dice-drop" in err
    # a combination: the size must suit the model's stride (checked before anything is written)
    status, err = run_main(fit, ["--image-size", "40", "--output", str(tmp_path / "run")])
    assert status == 1 and "--image-size 40: litenext needs a multiple of 16 (e.g. 32 or 48)" in err
    status, err = run_main(fit, ["--resume"])
    assert status == 1 and "--output" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_settings_from_a_config_file_are_checked_like_flags(tmp_path):
    fit = load_cli("training/fit.py")
    cases = [({"epochs": 0}, "--epochs"), ({"split": [0.5, 0.5]}, "--split"), ({"lr": -1}, "--lr"),
             ({"batch_size": "eight"}, "--batch-size"), ({"split": [1.0, 0.0, 0.0]}, "--split")]
    for settings_, flag in cases:
        (tmp_path / "c.json").write_text(json.dumps(settings_))
        status, err = run_main(fit, ["--config", str(tmp_path / "c.json"), "--output", str(tmp_path / "run")])
        assert status == 1 and flag in err and "Traceback" not in err, (settings_, err)
    (tmp_path / "c.json").write_text("{not json")
    status, err = run_main(fit, ["--config", str(tmp_path / "c.json")])
    assert status == 1 and "--config" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------
# Partial batches and odd sizes
# ---------------------------------------------------------------------------------------------


def test_training_split_smaller_than_the_batch(tmp_path):
    """Finding 2: 6 pairs at batch 8 (train split of 4) ended in OperatorNotAllowedInGraphError."""
    data = subset(tmp_path / "data", n=6)
    summary = train(TrainConfig(data=str(data), output=str(tmp_path / "run"), **{**TINY, "batch_size": 8, "epochs": 1}))
    assert (tmp_path / "run" / "best.keras").exists() and summary["images"] == 1


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    kl.create_model("tinyseg", input_shape=(32, 32, 3), num_classes=1).save(path)
    return path


def test_predict_any_size_in_every_mode(model_file, tmp_path):
    """Findings 2 and 6: pad mode died at the second image size; a 1x1 image crashed in OpenCV."""
    predict = load_cli("training/predict.py")
    images = tmp_path / "images"
    images.mkdir()
    sizes = {"one": (1, 1), "row": (1, 7), "column": (9, 1), "odd": (37, 53), "big": (70, 50)}
    rng = np.random.default_rng(0)
    for name, (h, w) in sizes.items():
        cv2.imwrite(str(images / f"{name}.png"), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    for mode in ("resize", "pad", "tile"):
        out = tmp_path / mode
        status, err = run_main(predict, [str(model_file), str(images), "--output", str(out), "--mode", mode])
        assert status == 0, err
        for name, (h, w) in sizes.items():
            assert cv2.imread(str(out / f"{name}_mask.png"), cv2.IMREAD_UNCHANGED).shape == (h, w), (mode, name)
            assert (out / f"{name}_overlay.png").exists()


def test_predict_never_overwrites_silently(model_file, tmp_path):
    """Finding 6: a.png and a.jpg wrote the same a_mask.png."""
    predict = load_cli("training/predict.py")
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(1)
    cv2.imwrite(str(images / "a.png"), rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    cv2.imwrite(str(images / "a.jpg"), rng.integers(0, 255, (40, 24, 3), dtype=np.uint8))
    cv2.imwrite(str(images / "b.png"), rng.integers(0, 255, (20, 20, 3), dtype=np.uint8))
    out = tmp_path / "out"
    assert run_main(predict, [str(model_file), str(images), "--output", str(out)])[0] == 0
    assert cv2.imread(str(out / "a_png_mask.png"), cv2.IMREAD_UNCHANGED).shape == (32, 32)
    assert cv2.imread(str(out / "a_jpg_mask.png"), cv2.IMREAD_UNCHANGED).shape == (40, 24)
    assert (out / "b_mask.png").exists() and not (out / "a_mask.png").exists()
    before = (out / "b_mask.png").stat().st_mtime_ns
    status, err = run_main(predict, [str(model_file), str(images), "--output", str(out)])
    assert status == 1 and "--overwrite" in err and str(out) in err
    assert (out / "b_mask.png").stat().st_mtime_ns == before
    assert run_main(predict, [str(model_file), str(images), "--output", str(out), "--overwrite"])[0] == 0


@pytest.mark.parametrize("threshold", ["1", "1.5", "0", "-0.1", "nan"])
def test_predict_threshold_outside_the_open_unit_interval(model_file, tmp_path, threshold):
    """Finding 6: --threshold 1 raised ZeroDivisionError, 1.5 and 0 gave silent empty / full masks."""
    status, err = run_main(load_cli("training/predict.py"), [str(model_file), str(tmp_path), f"--threshold={threshold}"])
    assert status == 2 and "--threshold" in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------------
# Data problems that were silent or reported one at a time
# ---------------------------------------------------------------------------------------------


def test_all_empty_masks_warn(tmp_path):
    """Finding 7: all-empty masks trained to 'Test Dice nan (0 of 2)' without a word."""
    data = subset(tmp_path / "data", n=8)
    for name in os.listdir(data / "masks"):
        cv2.imwrite(str(data / "masks" / name), np.zeros((96, 96), np.uint8))
    with pytest.warns(UserWarning, match="every mask in .* is empty"):
        train(TrainConfig(data=str(data), output=str(tmp_path / "run"), **{**TINY, "epochs": 1}))


def test_12_bit_data_in_16_bit_files_warns(tmp_path):
    """Finding 7: values 0-4080 in a 16-bit PNG were squashed to 17 grey levels without a word."""
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        cv2.imwrite(str(tmp_path / "images" / f"s{i}.png"), (rng.integers(0, 256, (16, 16)) * 16).astype(np.uint16))
        cv2.imwrite(str(tmp_path / "masks" / f"s{i}.png"), (rng.random((16, 16)) > 0.5).astype(np.uint8) * 255)
    with pytest.warns(UserWarning, match=r"3 of 3 images .* 16-bit files with values only up to 40\d\d .*17 grey levels"):
        data_lib.load_pairs(data_lib.find_pairs(tmp_path), 16)
    with pytest.warns(UserWarning, match="12-bit"):
        data_lib.read_image(tmp_path / "images" / "s0.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # full-range 16-bit data is fine
        cv2.imwrite(str(tmp_path / "images" / "s0.png"), np.full((16, 16), 60000, np.uint16))
        data_lib.read_image(tmp_path / "images" / "s0.png")


def test_pairing_and_decoding_problems_are_listed_together_and_leave_no_run_folder(tmp_path):
    """Finding 7: without --skip-bad the pairing problems came first, the decoding problems only
    on the next try. Finding 4: the failed start left config.json, so the rerun was refused."""
    data = subset(tmp_path / "data", n=6)
    names = sorted(os.listdir(data / "images"))
    os.remove(data / "masks" / names[0])  # unpaired
    (data / "images" / names[1]).write_bytes(b"\x89PNG\r\n\x1a\n truncated")  # undecodable
    fit = load_cli("training/fit.py")
    run = tmp_path / "run"
    status, err = run_main(fit, ["--data", str(data), "--output", str(run), "--quiet"])
    assert status == 1 and "Traceback" not in err
    assert names[0] in err and names[1] in err and "pass --skip-bad" in err
    assert not run.exists(), "a failed start leaves nothing behind"
    os.remove(data / "images" / names[0])
    os.remove(data / "images" / names[1])
    os.remove(data / "masks" / names[1])
    # the same folder is accepted by the corrected rerun
    train(TrainConfig(data=str(data), output=str(run), **{**TINY, "epochs": 1}))
    assert (run / "metrics.json").exists()


# ---------------------------------------------------------------------------------------------
# Corrupt model files (finding 8)
# ---------------------------------------------------------------------------------------------


def test_corrupt_keras_files_say_what_is_wrong(model_file, tmp_path):
    good = model_file.read_bytes()
    cases = {
        "empty.keras": (b"", "empty (0 bytes)"),
        "truncated.keras": (good[: len(good) // 2], "truncated or damaged .keras archive"),
        "text.keras": (b"hello, not a model", "not a .keras file"),
        "hdf5.keras": (b"\x89HDF\r\n\x1a\n" + bytes(100), "HDF5 file"),
    }
    for name, (content, words) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(RunError, match=re.escape(words)) as info:
            load_model_file(tmp_path / name)
        assert "File not found" not in str(info.value) and name in str(info.value)
    with zipfile.ZipFile(tmp_path / "other.keras", "w") as z:
        z.writestr("readme.txt", "hi")
    with pytest.raises(RunError, match="not a Keras model .no config.json, metadata.json"):
        load_model_file(tmp_path / "other.keras")
    with zipfile.ZipFile(model_file) as src, zipfile.ZipFile(tmp_path / "old.keras", "w") as dst:
        for item in src.namelist():
            content = src.read(item)
            if item == "metadata.json":
                content = json.dumps({**json.loads(content), "keras_version": "2.0.0"}).encode()
            if item == "config.json":
                content = b'{"class_name": "NoSuchLayerType", "config": {}}'
            dst.writestr(item, content)
    with pytest.raises(RunError, match=r"written by Keras 2\.0\.0 \(this is Keras"):
        load_model_file(tmp_path / "old.keras")
    status, err = run_main(load_cli("training/evaluate.py"), [str(tmp_path / "truncated.keras"), "--data", str(tmp_path)])
    assert status == 1 and "truncated" in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------------
# File-system faults (finding 3)
# ---------------------------------------------------------------------------------------------


def test_unwritable_output_is_one_line_before_training(dsb16, tmp_path, monkeypatch):
    fit = load_cli("training/fit.py")
    (tmp_path / "file").write_text("x")
    status, err = run_main(fit, ["--data", str(dsb16), "--output", str(tmp_path / "file" / "run")])
    assert status == 1 and "cannot create the run folder" in err and str(tmp_path / "file" / "run") in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    # a read-only folder (simulated: tests may run as root, who may write anywhere)
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if os.fspath(p) == str(readonly / "run") else real_access(p, mode, **kw))
    status, err = run_main(fit, ["--data", str(dsb16), "--output", str(readonly / "run")])
    assert status == 1 and "cannot write to the run folder" in err and "read-only" in err and "Traceback" not in err


def test_predict_and_evaluate_outputs_that_cannot_be_written(model_file, tmp_path):
    (tmp_path / "file").write_text("x")
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), np.zeros((8, 8, 3), np.uint8))
    status, err = run_main(load_cli("training/predict.py"), [str(model_file), str(image), "--output", str(tmp_path / "file" / "out")])
    assert status == 1 and "cannot create the output folder" in err and "Traceback" not in err
    status, err = run_main(load_cli("training/evaluate.py"), [str(model_file), "--data", str(tmp_path), "--json",
                                                              str(tmp_path / "file" / "r.json")])
    assert status == 1 and "the folder of --json" in err and "is a file, not a folder" in err and "Traceback" not in err


def test_a_write_failing_during_training_keeps_the_last_good_state(dsb16, tmp_path, monkeypatch):
    """A folder made read-only while training (the backup write of epoch 2 fails): one line
    naming the folder, the epoch-1 state kept, no temporary left; and a resume may change --lr
    (applied, said) but not --image-size (refused, named)."""
    run = tmp_path / "run"
    calls = []
    real = keras.Model.save_weights

    def failing(self, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(self, path, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "save_weights", failing)
    with pytest.raises(OutputError, match=f"cannot write to the run folder {re.escape(str(run))}.*Permission denied") as info:
        train(TrainConfig(data=str(dsb16), output=str(run), **{**TINY, "lr": 3e-3}))
    monkeypatch.setattr(keras.Model, "save_weights", real)
    assert len(str(info.value).splitlines()) == 1 and "kept (backup/ (after epoch 1) and best.keras)" in str(info.value)
    assert keras.saving.load_model(run / "best.keras") is not None
    assert not leftovers(run) and not (run / ".lock").exists() and not (run / "metrics.json").exists()

    fit = load_cli("training/fit.py")
    status, err = run_main(fit, ["--output", str(run), "--resume", "--image-size", "64", "--lr", "5e-4"])
    assert status == 1 and "--image-size 64 (the run has 32)" in err and "--lr 0.0005 (the run has" not in err
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        train(TrainConfig(output=str(run), resume=True, lr=5e-4, verbose=0))
    assert "Resuming with --lr 0.0005 (was 0.003)" in out.getvalue()
    assert json.loads((run / "config.json").read_text())["lr"] == 5e-4, "config.json says what the run went on with"
    assert [int(r["epoch"]) for r in read_history(run)] == [0, 1]
    assert (run / "metrics.json").exists() and not (run / "backup").exists()


def test_a_full_disk_at_the_end_loses_nothing(dsb16, tmp_path, monkeypatch):
    """ENOSPC while writing metrics.json: one line naming the file, no half-written metrics.json,
    no temporary; the resume only finishes the run."""
    from keras_litenext import utils

    run = tmp_path / "run"
    real_fsync = os.fsync
    state = {"armed": True}

    def full(fd):
        if state["armed"] and os.readlink(f"/proc/self/fd/{fd}").split("/")[-1].startswith(".metrics."):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(utils.os, "fsync", full)
    with pytest.raises(OutputError, match=r"cannot write .*metrics\.json: No space left on device"):
        train(TrainConfig(data=str(dsb16), output=str(run), **TINY))
    assert not (run / "metrics.json").exists() and not leftovers(run)
    state["armed"] = False
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        train(TrainConfig(output=str(run), resume=True, verbose=2))
    assert "Epoch " not in out.getvalue(), "nothing is retrained"
    assert (run / "metrics.json").exists() and [int(r["epoch"]) for r in read_history(run)] == [0, 1]


def test_a_vanished_run_folder_stops_in_one_line(dsb16, tmp_path, monkeypatch):
    from keras_litenext import train as training

    run = tmp_path / "run"
    real = training.StopOnNonFiniteLoss.on_train_batch_end

    def delete_during_epoch_2(self, batch, logs=None):
        real(self, batch, logs)
        if self.epoch == 1 and batch == 0:
            shutil.rmtree(run)

    monkeypatch.setattr(training.StopOnNonFiniteLoss, "on_train_batch_end", delete_during_epoch_2)
    with pytest.raises(OutputError, match="vanished during training"):
        train(TrainConfig(data=str(dsb16), output=str(run), **TINY))
    assert not run.exists(), "nothing is written into a recreated folder"


def test_nan_in_the_first_epoch_says_what_is_kept(dsb16, tmp_path):
    """Finding 4: the NaN message claimed backup/ and best.keras were kept when neither existed."""
    run = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match="before the first epoch was finished, so nothing was kept") as info:
        train(TrainConfig(data=str(dsb16), output=str(run), loss="bce", **{**TINY, "lr": 1e30}))
    assert "backup/" not in str(info.value) and not run.exists()


def test_nan_after_the_first_epoch_keeps_the_state_and_resume_applies_a_lower_lr(dsb16, tmp_path, monkeypatch):
    """Finding 4: the NaN message's advice ("lower --lr ... --resume") NaNed again, as the
    resumed run kept the stored rate."""
    from keras_litenext import train as training

    run = tmp_path / "run"
    real = training.StopOnNonFiniteLoss.on_train_batch_end
    seen = []

    def nan_at_high_rate(self, batch, logs=None):  # the loss is NaN in epoch 2 at a rate above 3e-4
        rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        seen.append(rate)
        real(self, batch, {**(logs or {}), "loss": float("nan")} if self.epoch == 1 and rate > 3e-4 else logs)

    monkeypatch.setattr(training.StopOnNonFiniteLoss, "on_train_batch_end", nan_at_high_rate)
    with pytest.raises(NonFiniteLossError, match=r"at batch 1 of epoch 2\. The last good state is kept in .*backup/ \(after "
                                                 r"epoch 1\).*--resume --lr"):
        train(TrainConfig(data=str(dsb16), output=str(run), **{**TINY, "lr": 3e-3}))
    assert not (run / "metrics.json").exists()
    train(TrainConfig(output=str(run), resume=True, lr=5e-4, verbose=0))
    assert max(seen[-3:]) < 3e-4, "the resumed epoch ran at the new, lower rate"
    assert [int(r["epoch"]) for r in read_history(run)] == [0, 1] and (run / "metrics.json").exists()


# ---------------------------------------------------------------------------------------------
# Kill anywhere, resume losing at most one epoch; one writer per run folder
# ---------------------------------------------------------------------------------------------

DRIVER = textwrap.dedent('''
    import json, os, signal, sys, time
    import keras
    from keras_litenext import train as training
    from keras_litenext.runs import folder as runs  # where Run.write_json looks up write_json
    from keras_litenext.train import TrainConfig, train

    exec(open(sys.argv[4]).read())
    point, out, data = sys.argv[1], sys.argv[2], sys.argv[3]
    epoch = {"now": None}

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    real_batch_end = training.StopOnNonFiniteLoss.on_train_batch_end

    def batch_end(self, batch, logs=None):
        real_batch_end(self, batch, logs)
        epoch["now"] = self.epoch
        if point == "mid-epoch" and self.epoch == 1 and batch == 1:
            open(os.path.join(out, "paused"), "w").close()  # the test checks the lock, then kills
            time.sleep(600)

    training.StopOnNonFiniteLoss.on_train_batch_end = batch_end
    real_save_weights = keras.Model.save_weights

    def save_weights(self, path, *args, **kwargs):
        if point == "backup" and epoch["now"] == 1:
            with open(path, "wb") as f:
                f.write(b"\\x89HDF\\r\\n\\x1a\\n half")
            die()
        return real_save_weights(self, path, *args, **kwargs)

    keras.Model.save_weights = save_weights
    real_save = keras.Model.save

    def save(self, path, *args, **kwargs):
        if point == "best" and epoch["now"] == 0:
            open(path, "wb").close()  # the 0-byte .best.*.tmp.keras of the issue
            die()
        return real_save(self, path, *args, **kwargs)

    keras.Model.save = save
    real_write_json = runs.write_json

    def write_json(path, obj):
        if point == "metrics" and path.endswith("metrics.json"):
            with open(os.path.join(os.path.dirname(path), ".metrics.x.tmp.json"), "w") as f:
                f.write('{"half": ')
            die()
        return real_write_json(path, obj)

    runs.write_json = write_json
    train(TrainConfig(data=data, output=out, model="tinyseg", epochs=2, image_size=32, batch_size=4, verbose=0, mwl_kernel=3,
                      lr=3e-3))
''')
POINTS = ("mid-epoch", "backup", "best", "metrics")


@pytest.fixture(scope="module")
def killed_runs(dsb16, tmp_path_factory):
    """One training process per kill point, all started at once; each is SIGKILLed at its point
    (mid-epoch: by the test, once the lock is checked)."""
    root = tmp_path_factory.mktemp("killed")
    (root / "driver.py").write_text(DRIVER)
    (root / "tinyseg.py").write_text(TINYSEG)
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3", TF_NUM_INTRAOP_THREADS="1", TF_NUM_INTEROP_THREADS="1",
               OMP_NUM_THREADS="1")  # four processes share the cores
    procs = {}
    for point in POINTS:
        procs[point] = subprocess.Popen([sys.executable, str(root / "driver.py"), point, str(root / point), str(dsb16), str(root / "tinyseg.py")],
                                        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    paused = root / "mid-epoch" / "paused"
    deadline = time.time() + 400
    while not paused.exists() and procs["mid-epoch"].poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert paused.exists(), procs["mid-epoch"].communicate()[0][-3000:]
    os.remove(paused)
    fit = load_cli("training/fit.py")
    lock_checks = [run_main(fit, ["--data", str(dsb16), "--output", str(root / "mid-epoch"), "--quiet"]),
                   run_main(fit, ["--output", str(root / "mid-epoch"), "--resume"])]
    procs["mid-epoch"].send_signal(signal.SIGKILL)
    results = {}
    for point, proc in procs.items():
        output = proc.communicate(timeout=400)[0]
        rows = read_history(root / point) if (root / point / "history.csv").exists() else []
        results[point] = {"status": proc.returncode, "output": output, "run": root / point,
                          "finished": len({r["epoch"] for r in rows if None not in r.values()})}
    results["lock_checks"] = lock_checks
    return results


def test_a_second_fit_on_the_same_output_is_refused(killed_runs):
    for status, err in killed_runs["lock_checks"]:
        assert status == 1 and "in use by another training process" in err and ".lock" in err, err
        assert "Traceback" not in err


@pytest.mark.parametrize("point", POINTS)
def test_kill_anywhere_resume_loses_at_most_one_epoch(killed_runs, point):
    killed = killed_runs[point]
    assert killed["status"] == -signal.SIGKILL, f"{point}: the kill point was not reached\n{killed['output'][-3000:]}"
    run = killed["run"]
    assert not (run / "metrics.json").exists()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        train(TrainConfig(output=str(run), resume=True, verbose=2))
    retrained = len(re.findall(r"^Epoch \d+/2", out.getvalue(), flags=re.MULTILINE))
    assert retrained - (2 - killed["finished"]) <= 1, f"{point}: {retrained} epochs retrained after {killed['finished']} finished"
    assert [int(r["epoch"]) for r in read_history(run)] == [0, 1], "one history row per epoch"
    for name in ("config.json", "splits.json", "best.keras", "history.csv", "metrics.json", "curves.png", "test_overlays.png"):
        assert (run / name).exists(), (point, name)
    assert not (run / "backup").exists() and not leftovers(run) and not (run / ".lock").exists()
    assert_best_is_best_validation_epoch(run)
    # a finished run has nothing left to resume
    with pytest.raises(RunError, match="finished run"):
        train(TrainConfig(output=str(run), resume=True, verbose=0))


def test_a_backup_of_keras_backup_and_restore_still_resumes(tmp_path):
    """A run killed under an earlier version (keras' BackupAndRestore files) goes on from its epoch."""
    from keras_litenext.train import RunBackup

    model = kl.create_model("tinyseg", input_shape=(32, 32, 3), num_classes=1)
    model.compile("adam", "mse")
    x = np.zeros((2, 32, 32, 3), np.float32)
    model.fit(x, np.zeros((2, 32, 32, 1), np.float32), epochs=2, verbose=0,
              callbacks=[keras.callbacks.BackupAndRestore(str(tmp_path / "backup"), delete_checkpoint=False)])
    backup = RunBackup(tmp_path / "backup")
    assert backup.latest() == (2, str(tmp_path / "backup" / "latest.weights.h5"))
    fresh = kl.create_model("tinyseg", input_shape=(32, 32, 3), num_classes=1)
    fresh.compile("adam", "mse")
    assert backup.restore(fresh) == 2
    assert all(np.array_equal(a, b) for a, b in zip(fresh.get_weights(), model.get_weights()))


def test_the_lock_of_a_killed_process_is_not_stale(tmp_path):
    """The lock is the operating system's: a killed holder leaves nothing that blocks a resume."""
    run = Run(str(tmp_path), None)
    code = textwrap.dedent(f"""
        import fcntl, os, time
        f = open({str(tmp_path / '.lock')!r}, "a+")
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # what Run.lock takes, held by another process
        f.write(str(os.getpid())); f.flush()
        print("held", flush=True); time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    with pytest.raises(RunError, match=f"pid {proc.pid}"):
        with run.lock():
            pass
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with run.lock():
        assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())
    assert not (tmp_path / ".lock").exists()
