"""The benchmark suite runs end to end (tiny sizes, one round; no timing is asserted); its peer
table, the peers' signature surgery and the browser benchmark's reading of the page's WebAssembly."""

import importlib.util
import json
import os
import sys
import types

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")


def load(name):
    """`benchmarks/<name>.py` as a module (the folder on the path: the scripts import each other)."""
    if BENCH not in sys.path:
        sys.path.insert(0, BENCH)
    spec = importlib.util.spec_from_file_location(f"bench_{name}", os.path.join(BENCH, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_suite_smoke_run(tmp_path, capsys):
    bench = load("run")
    out = tmp_path / "bench.json"
    assert bench.main(["--smoke", "--models", "ulite", "--no-jax", "--no-train", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| ulite | 32² |" in text and "Floor:" in text and "images/s with augmentation" in text

    row = json.loads(out.read_text())["rows"][0]
    assert set(row["files"]) == {"fp32", "int8", "int8_strict"}
    assert row["files"]["int8"]["partitions"] == 1  # the islands file is one XNNPACK partition
    assert all(f["ms_1t"] > 0 for f in row["files"].values()) and row["keras"]["tf_b1"] > 0
    assert row["data"]["test"] == 30  # calibrated on the bundled sample's training images
    assert bench.main(["--models", "nosuchmodel", "--no-write"]) == 2


def test_peer_table_rows_line_up_and_say_why_a_peer_is_missing():
    bench = load("run")
    rows = [{
        "model": "litenext", "size": 96, "weights": "preset litenext-nuclei",
        "files": {"fp32": {"kib": 2833, "partitions": 1, "ms_1t": 10.0, "ms_2t": 6.0},
                  "int8": {"kib": 889, "partitions": 1, "ms_1t": 8.0, "ms_2t": 5.0}},
        "peers": {"keras_fp32": {"kib": 2850, "partitions": 3, "ms_1t": 12.0, "ms_2t": 7.5},
                  "keras_int8_ptq": {"error": "ConverterError: op | not supported"}},
        "scores": {"keras": {"dice": 0.874}, "fp32": {"dice": 0.874}, "int8": {"dice": 0.87}, "keras_fp32": {"dice": 0.874}},
        "data": {"folder": "/x/dsb2018_96", "train": 240, "val": 30, "test": 30},
    }]
    lines = bench.peer_table(rows, types.SimpleNamespace(threads=[1, 2], num_calibration=32))
    table = [line for line in lines if line.startswith("|")]
    assert len({line.count("|") for line in table}) == 1, table  # every row has the header's columns
    text = "\n".join(lines)
    assert "| not made: ConverterError: op / not supported |" in text
    assert "| Keras export, fp32 | 2850 | 3 | 12.00 | 7.50 | 1.50 | Dice 0.8740 |" in text  # 7.5 / our int8's 5.0
    assert "the Keras float model (no file)" in text and "the test split of `dsb2018_96` (30 images" in text


def test_with_signature_adds_a_runnable_signature_and_the_quantizer_reads_it(tmp_path):
    import keras
    from ai_edge_litert.interpreter import Interpreter

    from keras_litenext import litert

    peers = load("peers")
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(2, 3, padding="same")(keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)))
    fp32 = litert.convert(model, "fp32")
    assert Interpreter(model_content=fp32).get_signature_list() == {}  # what the quantizer cannot calibrate through
    signed = peers.with_signature(fp32)
    interpreter = Interpreter(model_content=signed)
    (key, io), = interpreter.get_signature_list().items()
    x = np.random.default_rng(0).random((4, 8, 8, 3), dtype=np.float32)
    runner = interpreter.get_signature_runner(key)
    out = runner(**{io["inputs"][0]: x[:1]})[io["outputs"][0]]
    np.testing.assert_array_equal(out, litert.run_tflite(fp32, x[:1], num_threads=1))


def test_the_quantizer_peer_makes_an_int8_file(tmp_path):
    import importlib.util

    import keras

    from keras_litenext import litert

    if importlib.util.find_spec("litert_quantizer") is None:
        pytest.skip("litert-quantizer is a benchmark peer, outside the test extra (pip install litert-quantizer)")
    peers = load("peers")
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(2, 3, padding="same")(keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)))
    x = np.random.default_rng(0).random((4, 8, 8, 3), dtype=np.float32)
    path = peers.quantizer_int8(litert.convert(model, "fp32"), str(tmp_path / "q.tflite"), x)
    info = litert.inspect_tflite(path)
    assert info["op_counts"].get("CONV_2D") == 2 and not info["float_ops"].get("CONV_2D"), info  # int8 convolutions
    y, ref = litert.run_tflite(path, x, num_threads=1), keras.ops.convert_to_numpy(model(x))
    assert np.corrcoef(y.ravel(), ref.ravel())[0, 1] > 0.99


def _wasm(*sections):
    return b"\0asm\x01\0\0\0" + b"".join(bytes([sid, len(body)]) + bytes(body) for sid, body in sections)


def test_wasm_threads_reads_the_shared_memory_flag():
    browser = load("browser")
    assert browser._wasm_shared_memory(_wasm((5, [1, 0x03, 1, 2])))  # one memory: shared, min 1, max 2
    assert not browser._wasm_shared_memory(_wasm((5, [1, 0x01, 1, 2])))
    imports = [2, 1, 97, 1, 102, 0, 0, 1, 97, 1, 109, 2, 0x03, 1, 2]  # a function import, then a shared memory import
    assert browser._wasm_shared_memory(_wasm((1, [0]), (2, imports)))
    assert not browser._wasm_shared_memory(_wasm((1, [0])))


def test_the_pages_webassembly_is_not_threaded():
    """BENCHMARKS.md times LiteRT at 1 thread against the page because its WebAssembly build is
    single-threaded; a pinned MediaPipe with a threaded build fails this, and the comparison must change."""
    from keras_litenext.web import npm

    for name, entry in npm.pinned().items():
        npm.tarball(name, entry)  # the pinned tarball, from the cache or the npm registry (as the web tests fetch it)
    threads = load("browser").wasm_threads()
    assert threads and not any(threads.values()), threads
