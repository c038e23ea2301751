"""What you would get otherwise: the same weights through other tools, for the suite (`run.py`).

Benchmark-only dependencies, not the package's: Keras' own LiteRT export (Keras 3, TensorFlow
backend) and `litert-quantizer` (`pip install litert-quantizer`, the renamed ai-edge-quantizer).
Each peer file is made from the same float model (or our fp32 file) and the same calibration
images as ours:

- `keras_fp32`: `model.export(path, format="litert")`, Keras' defaults (its SavedModel route,
  TFLITE_BUILTINS + SELECT_TF_OPS, a free batch dimension);
- `keras_int8_ptq`: the same call with the converter options of TensorFlow's full-integer
  post-training quantization (`optimizations=[tf.lite.Optimize.DEFAULT]`, a
  `representative_dataset`, `target_spec={"supported_ops": [TFLITE_BUILTINS_INT8]}`, int8
  input and output);
- `quantizer_int8`: `litert_quantizer.Quantizer` with its static int8 recipe
  (`recipe.static_wi8_ai8()`: int8 weights per channel, int8 activations) on our fp32 file,
  calibrated on the same images. The quantizer calibrates through a signature and our files
  have none, so a `serving_default` SignatureDef naming the file's input and output is added
  first (`with_signature`; the ops are untouched).

A peer that cannot be made gives `{"error": one line}` and the suite goes on.
"""

import os

import numpy as np

PEERS = {
    "keras_fp32": "Keras `model.export(format=\"litert\")`, defaults",
    "keras_int8_ptq": "Keras `model.export(format=\"litert\")`, full-int8 PTQ (TFLITE_BUILTINS_INT8, int8 I/O, representative dataset)",
    "quantizer_int8": "`litert-quantizer` static int8 (`recipe.static_wi8_ai8()`) of our fp32 file",
}


def one_line(err):
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    for line in lines:  # a converter's error: the line that names the cause
        if "error:" in line.lower() and len(line) < 300:
            text = line
            break
    return f"{type(err).__name__}: {text[:240]}"


def keras_fp32(model, path):
    model.export(path, format="litert", verbose=False)
    return path


def keras_int8_ptq(model, path, calibration):
    """Keras' export with TensorFlow's full-integer PTQ options; `calibration`: float images in
    the model's input range, `(N, H, W, C)`."""
    import tensorflow as tf

    def representative_dataset():
        for x in calibration:
            yield [np.asarray(x, np.float32)[None]]

    model.export(path, format="litert", verbose=False, optimizations=[tf.lite.Optimize.DEFAULT],
                 representative_dataset=representative_dataset,
                 target_spec={"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]},
                 inference_input_type=tf.int8, inference_output_type=tf.int8)
    return path


def with_signature(data, key="serving_default"):
    """`.tflite` bytes with one SignatureDef `key` over the first subgraph's inputs and outputs
    (named after their tensors), for tools that run a model by signature."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(data))
    if model.signatureDefs:
        return bytes(data)
    graph = model.subgraphs[0]

    def maps(indices):
        out = []
        for i in indices:
            m = schema.TensorMapT()
            name = graph.tensors[i].name
            m.name, m.tensorIndex = (name.decode() if isinstance(name, bytes) else name), int(i)
            out.append(m)
        return out

    sig = schema.SignatureDefT()
    sig.signatureKey, sig.subgraphIndex = key, 0
    sig.inputs, sig.outputs = maps(graph.inputs), maps(graph.outputs)
    model.signatureDefs = [sig]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def quantizer_int8(fp32_bytes, path, calibration):
    """`litert-quantizer`'s static int8 of a float `.tflite` file, calibrated on `calibration`
    (float images, `(N, H, W, C)`)."""
    from ai_edge_litert.interpreter import Interpreter
    from litert_quantizer import quantizer, recipe

    data = with_signature(fp32_bytes)
    signatures = Interpreter(model_content=data).get_signature_list()
    key = next(iter(signatures))
    name = signatures[key]["inputs"][0]
    q = quantizer.Quantizer(bytearray(data))
    q.load_quantization_recipe(recipe.static_wi8_ai8())
    ranges = q.calibrate({key: [{name: np.asarray(x, np.float32)[None]} for x in calibration]}, num_threads=1)
    result = q.quantize(ranges, enable_progress_report=False)
    with open(path, "wb") as f:
        f.write(bytes(result.quantized_model))
    return path


def make_peers(name, model, fp32_bytes, folder, calibration, log=print):
    """`{peer: {"path"} or {"error"}}` of every peer of `model` (named `<name>_<peer>.tflite`)."""
    import contextlib
    import io

    builds = {
        "keras_fp32": lambda p: keras_fp32(model, p),
        "keras_int8_ptq": lambda p: keras_int8_ptq(model, p, calibration),
        "quantizer_int8": lambda p: quantizer_int8(fp32_bytes, p, calibration),
    }
    out = {}
    for peer, build in builds.items():
        path = os.path.join(folder, f"{name}_{peer}.tflite")
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # progress bars
                build(path)
            from keras_litenext.litert import TFLiteRunner

            TFLiteRunner(path, num_threads=1)  # it loads and allocates in LiteRT (no Flex ops, ...)
            out[peer] = {"path": path}
        except ImportError as err:
            out[peer] = {"error": f"not installed ({err.name or err}): pip install litert-quantizer"}
        except Exception as err:  # one peer that cannot be made is a row saying why
            out[peer] = {"error": one_line(err)}
        if "error" in out[peer]:
            log(f"{name}: {peer} not made ({out[peer]['error']})")
    return out


def heldout(data, model):
    """`(task, split arrays)` of a dataset folder for `model`: the split training and export use
    for a bare model (`runs.file_run`: 80/10/10, seed 42), images at the model's size. Raises
    ValueError (one line) when the folder does not fit the model (a classifier on masks, ...)."""
    from keras_litenext.runs import RunError, file_run

    try:
        run = file_run(model, os.fspath(data))
        arrays, _ = run.readable_arrays(skip_bad=True)
    except (RunError, ValueError, FileNotFoundError, OSError) as err:
        raise ValueError(one_line(err)) from None
    if len(arrays["test"][0]) == 0:
        raise ValueError(f"{data}: the test split is empty")
    return run.task, arrays


def score_file(path, task, images, masks, threads):
    """The task's test scores of a `.tflite` file (LiteRT, XNNPACK): `{"dice"}` for a
    segmenter, `{"accuracy", "auc"}` for a classifier."""
    from keras_litenext.data.intensity import to_float
    from keras_litenext.export.scoring import evaluate_tflite

    return headline(task, task.report_summary(evaluate_tflite(path, to_float(images), masks, task, num_threads=threads)))


def score_keras(model, task, images, masks):
    from keras_litenext.export.scoring import predict, score_logits

    return headline(task, task.report_summary(score_logits(task, masks, predict(model, images))))


def headline(task, summary):
    if "dice" in summary:
        return {"dice": summary["dice"]["mean"]}
    return {"accuracy": summary.get("accuracy"), "auc": summary.get("auc")}


def fmt_score(score):
    if not score:
        return "-"
    if "error" in score:
        return f"not scored: {score['error']}"
    if "dice" in score:
        return f"Dice {score['dice']:.4f}"
    auc = score.get("auc")
    return f"accuracy {score['accuracy']:.4f}, AUC {'-' if auc is None else f'{auc:.4f}'}"
