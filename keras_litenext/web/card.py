"""The model card of a `.tflite` file for the page: its TFLite metadata and its export report.

`read_card(path)` reads, without MediaPipe, what MediaPipe's tasks read from the file (the
`TFLITE_METADATA` flatbuffer and the zipped `labels.txt`): which reader runs it (the output's
content: an image for `ImageSegmenter`, features for `ImageClassifier`), the segmenter activation,
the labels, the name and description; the input's size and type come from LiteRT. The export's
`report.json` and the file's contract (`<stem>.json`) beside the file, when there, add the class
names, the training data, the test metrics of this file and its int8 mode.
"""

import io
import json
import pathlib
import zipfile

import flatbuffers
from flatbuffers.table import Table

METADATA_NAME = b"TFLITE_METADATA"
# what reads a file, by the content of its output tensor (metadata_schema.fbs ContentProperties)
READERS = {2: "ImageSegmenter", 1: "ImageClassifier"}  # ImageProperties, FeatureProperties
ACTIVATIONS = {0: "NONE", 1: "SIGMOID", 2: "SOFTMAX"}  # image_segmenter_metadata_schema.fbs


class CardError(ValueError):
    """The file is not a `.tflite` file the page can run (one line, naming it)."""


# -- a few fields of the metadata flatbuffer ---------------------------------------------------------
def _root(buf):
    return Table(buf, flatbuffers.encode.Get(flatbuffers.packer.uoffset, buf, 0))


def _offset(t, slot):
    return t.Offset(4 + 2 * slot)


def _string(t, slot):
    o = _offset(t, slot)
    return t.String(o + t.Pos).decode("utf-8") if o else None


def _scalar(t, slot, flags):
    o = _offset(t, slot)
    return t.Get(flags, o + t.Pos) if o else 0


def _table(t, slot):
    o = _offset(t, slot)
    return Table(t.Bytes, t.Indirect(o + t.Pos)) if o else None


def _tables(t, slot):
    o = _offset(t, slot)
    if not o:
        return []
    start = t.Vector(o)
    return [Table(t.Bytes, t.Indirect(start + 4 * i)) for i in range(t.VectorLen(o))]


def _bytes(t, slot):
    o = _offset(t, slot)
    return bytes(t.Bytes[t.Vector(o): t.Vector(o) + t.VectorLen(o)]) if o else b""


def metadata_buffer(data):
    """The `TFLITE_METADATA` buffer of a model flatbuffer, or None."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(data, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() == METADATA_NAME:
            return bytes(model.Buffers(entry.Buffer()).DataAsNumpy().tobytes())
    return None


def parse_metadata(buf):
    """`{"name", "description", "version", "author", "license", "reader", "activation"}` of a
    `ModelMetadata` flatbuffer (the fields the page shows and the reader it needs)."""
    root = _root(buf)
    card = {key: _string(root, slot) for key, slot in
            (("name", 0), ("description", 1), ("version", 2), ("author", 4), ("license", 5))}
    subgraph = (_tables(root, 3) or [None])[0]
    outputs = _tables(subgraph, 3) if subgraph else []
    content = _table(outputs[0], 3) if outputs else None  # TensorMetadata.content
    kind = _scalar(content, 0, flatbuffers.number_types.Uint8Flags) if content else 0
    card["reader"] = READERS.get(kind)
    card["activation"] = None
    for custom in _tables(subgraph, 9) if subgraph else []:  # SubGraphMetadata.custom_metadata
        if _string(custom, 0) == "SEGMENTER_METADATA":
            options = _bytes(custom, 1)
            card["activation"] = ACTIVATIONS.get(_scalar(_root(bytearray(options)), 0, flatbuffers.number_types.Int8Flags))
    return card


def _labels(data):
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return [line for line in archive.read("labels.txt").decode("utf-8").splitlines() if line.strip()]
    except (zipfile.BadZipFile, KeyError):
        return []


def _read_json(path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _test_scores(test):
    """`{metric: value}` of a report's test block: the means (and plain numbers), no per-image lists."""
    scores = {}
    for key, value in (test or {}).items():
        if isinstance(value, dict) and isinstance(value.get("mean"), (int, float)):
            scores[key] = value["mean"]
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("images", "counted"):
            scores[key] = value
    return scores


def _report_card(path):
    """What the export's report and the file's contract beside `path` say of it (empty without them)."""
    report, contract = _read_json(path.parent / "report.json"), _read_json(path.with_suffix(".json"))
    entry = next((f for f in report.get("files", []) if f.get("file") == path.name), {})
    card = {"model": report.get("model") or contract.get("model"), "task": report.get("task") or contract.get("task"),
            "file_kind": entry.get("kind") or contract.get("kind"), "file_description": entry.get("description") or contract.get("description"),
            "int8_mode": entry.get("int8_mode"), "training_data": (report.get("source") or {}).get("data"),
            "splits": report.get("splits"), "evaluation": report.get("evaluation"), "test": _test_scores(entry.get("test")),
            "gate": (report.get("gate") or {}).get("message")}
    classes = contract.get("classes")
    names = [classes[str(i)] for i in range(len(classes))] if isinstance(classes, dict) else report.get("class_names")
    return {k: v for k, v in card.items() if v not in (None, {}, [])}, names


def class_names(labels, activation, known=None):
    """The class names, class 0 first: the report's when known, else the labels (one label with
    a sigmoid: the foreground, after a background)."""
    if known:
        return [str(n) for n in known]
    return ["background", *labels] if activation == "SIGMOID" else list(labels)


def read_card(path):
    """The page's `model.json` for a `.tflite` file: reader, activation, labels, classes and their
    colours, how MediaPipe's categories map to classes, the input, and the model card.

    Raises:
        CardError: not a TFLite file, no metadata MediaPipe can read, or no readable input.
    """
    path = pathlib.Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CardError(f"{path}: cannot be read ({err.strerror or err})") from None
    if data[4:8] != b"TFL3":
        raise CardError(f"{path}: not a TFLite model (no TFL3 file identifier)")
    try:
        buf = metadata_buffer(data)
        meta = parse_metadata(bytearray(buf)) if buf else None
    except Exception as err:  # noqa: BLE001  (a damaged flatbuffer: struct, index or value errors; one line)
        raise CardError(f"{path}: its TFLite metadata cannot be read ({type(err).__name__})") from None
    if not meta or not meta["reader"]:
        raise CardError(f"{path}: no TFLite metadata naming an image segmenter or classifier output "
                        "(MediaPipe Tasks need it; `keras-litenext export` writes it)")
    from keras_litenext.litert import io_details
    from keras_litenext.visualize import class_colors

    try:
        io = io_details(str(path))
    except Exception as err:  # noqa: BLE001  (LiteRT refuses the file: one line naming it)
        raise CardError(f"{path}: LiteRT cannot load it ({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
    labels = _labels(data)
    report, known = _report_card(path)
    classes = class_names(labels, meta["activation"], known)
    lookup = {name: i for i, name in enumerate(classes)}
    shape = [int(v) for v in io["input"]["shape"]]
    return {
        "file": "model.tflite", "source_file": path.name, "size_bytes": len(data),
        "reader": meta["reader"], "activation": meta["activation"], "labels": labels, "classes": classes,
        "colors": [list(c) for c in class_colors(len(classes))],
        "category_to_class": [lookup.get(label, i) for i, label in enumerate(labels)],
        "input": {"height": shape[1], "width": shape[2], "channels": shape[3], "dtype": str(io["input"]["dtype"])},
        "output": {"shape": [int(v) for v in io["output"]["shape"]], "dtype": str(io["output"]["dtype"])},
        "metadata": {k: meta[k] for k in ("name", "description", "version", "author", "license")},
        "card": report,
    }
