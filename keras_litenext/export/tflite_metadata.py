"""The TFLite metadata of an image segmenter or classifier, written with `flatbuffers` alone.

MediaPipe Tasks read a model's metadata from the `TFLITE_METADATA` entry of the model's
`metadata` list: a buffer holding a `ModelMetadata` flatbuffer (file identifier `M001`) of the
TFLite metadata schema (`metadata_schema.fbs`, schema version 1.5.0, Apache-2.0, published with
MediaPipe and tflite-support). The files a `TensorMetadata` names (here `labels.txt`) follow the
model as a zip archive appended to the `.tflite` bytes.

This module writes the few tables an image task needs, from a plain dict in the form of
MediaPipe's `MetadataDisplayer` JSON (snake_case names, enum values by name), so that the dict
is also what a reader shows (`metadata_spec` makes it, `pack_metadata` turns it into the
flatbuffer, `populate` puts it and the associated files into the model). Only `flatbuffers`
(TensorFlow's dependency) and the model schema of `ai-edge-litert` are used; no MediaPipe.
The field slots are those of the schema, in declaration order (a union takes two: its type, then
its value).
"""

import io
import json
import zipfile

import flatbuffers
import numpy as np

METADATA_NAME = "TFLITE_METADATA"  # the model's `metadata` entry MediaPipe looks up
METADATA_IDENTIFIER = b"M001"  # metadata_schema.fbs `file_identifier`
SEGMENTER_METADATA = "SEGMENTER_METADATA"  # the custom metadata name MediaPipe's segmenter reads
SEGMENTER_IDENTIFIER = b"V001"  # image_segmenter_metadata_schema.fbs `file_identifier`
LABELS_DESCRIPTION = "Labels for categories that the model can recognize."

# Enum values of the schema, by the names the displayer's JSON uses.
COLOR_SPACES = {"UNKNOWN": 0, "RGB": 1, "GRAYSCALE": 2}
FILE_TYPES = {"UNKNOWN": 0, "DESCRIPTIONS": 1, "TENSOR_AXIS_LABELS": 2}
CONTENT_PROPERTIES = {"FeatureProperties": 1, "ImageProperties": 2}
PROCESS_UNITS = {"NormalizationOptions": 1}
ACTIVATIONS = {"NONE": 0, "SIGMOID": 1, "SOFTMAX": 2}
UINT8, FLOAT32 = 3, 0  # TensorType of the model schema


def _f32(values):
    """Floats as the flatbuffer stores them (float32), back as Python floats."""
    return [float(v) for v in np.asarray(values, np.float32)]


def image_input(name, description, mean, std, tensor_type):
    """An RGB image input with its `NormalizationOptions` (`x = (p - mean) / std`) and the range
    of the values the model sees (`Stats`): 0..255 for a uint8 tensor, `(0 - mean) / std` ..
    `(255 - mean) / std` for a float32 one, none for another type."""
    if len(mean) != len(std):
        raise ValueError(f"mean and std need as many values, got {len(mean)} and {len(std)}")
    if tensor_type == UINT8:
        stats = {"max": [255.0], "min": [0.0]}
    elif tensor_type == FLOAT32:
        stats = {"max": _f32([(255.0 - m) / s for m, s in zip(mean, std)]), "min": _f32([(0.0 - m) / s for m, s in zip(mean, std)])}
    else:
        stats = {}
    return {"name": name, "description": description,
            "content": {"content_properties_type": "ImageProperties", "content_properties": {"color_space": "RGB"}},
            "process_units": [{"options_type": "NormalizationOptions", "options": {"mean": _f32(mean), "std": _f32(std)}}],
            "stats": stats}


def labels_file(name):
    """The associated labels file of an output tensor (one label per channel)."""
    return {"name": name, "description": LABELS_DESCRIPTION, "type": "TENSOR_AXIS_LABELS"}


def segmentation_output(name, description, labels_name):
    """Per-pixel logits: a grey image per channel (content dimensions 1 to 2), with the labels."""
    return {"name": name, "description": description,
            "content": {"content_properties_type": "ImageProperties", "content_properties": {"color_space": "GRAYSCALE"},
                        "range": {"min": 1, "max": 2}},
            "stats": {}, "associated_files": [labels_file(labels_name)]}


def classification_output(name, description, labels_name, tensor_type):
    """One score per class, with the labels (stats: 0..255 for uint8, 0..1 for float32)."""
    stats = {"max": [255.0], "min": [0.0]} if tensor_type == UINT8 else {"max": [1.0], "min": [0.0]} if tensor_type == FLOAT32 else {}
    return {"name": name, "description": description,
            "content": {"content_properties_type": "FeatureProperties", "content_properties": {}},
            "stats": stats, "associated_files": [labels_file(labels_name)]}


def metadata_spec(name, description, version, author, licence, inputs, outputs, activation=None):
    """The model's metadata as a dict (the displayer's JSON form). `activation` (`"SIGMOID"`,
    `"SOFTMAX"`) adds the segmenter options MediaPipe's `ImageSegmenter` reads."""
    subgraph = {"input_tensor_metadata": list(inputs), "output_tensor_metadata": list(outputs)}
    if activation is not None:
        subgraph["custom_metadata"] = [{"name": SEGMENTER_METADATA, "data": {"activation": activation}}]
    # The schema's version table: 1.5.0 added custom metadata; nothing else written here is newer than 1.0.0.
    return {"name": name, "description": description, "version": version, "subgraph_metadata": [subgraph],
            "author": author, "license": licence, "min_parser_version": "1.5.0" if activation is not None else "1.0.0"}


def display_json(spec):
    """The JSON text of a `metadata_spec` as MediaPipe's displayer prints the written file: its
    floats (float32 in the file) with six decimals."""
    def shown(value):
        if isinstance(value, float):
            return round(value, 6)
        if isinstance(value, dict):
            return {k: shown(v) for k, v in value.items()}
        return [shown(v) for v in value] if isinstance(value, list) else value

    return json.dumps(shown(spec), indent=2)


# ----------------------------------------------------------------------------------------------
# The flatbuffer
# ----------------------------------------------------------------------------------------------
def _table(b, fields):
    """A table from `{slot: value}`: an int offset (a string, vector or table already built), or
    `("int8" | "uint8" | "int32", number)` for a scalar; None leaves the field out."""
    b.StartObject(max(fields) + 1 if fields else 0)
    for slot, value in fields.items():
        if value is None:
            continue
        if isinstance(value, tuple):
            kind, number = value
            {"int8": b.PrependInt8Slot, "uint8": b.PrependUint8Slot, "int32": b.PrependInt32Slot}[kind](slot, number, 0)
        else:
            b.PrependUOffsetTRelativeSlot(slot, value, 0)
    return b.EndObject()


def _string(b, text):
    return None if text is None else b.CreateString(text)


def _vector(b, offsets):
    """A vector of tables or strings (offsets); None for None."""
    if offsets is None:
        return None
    b.StartVector(4, len(offsets), 4)
    for offset in reversed(offsets):
        b.PrependUOffsetTRelative(offset)
    return b.EndVector()


def _floats(b, values):
    return None if values is None else b.CreateNumpyVector(np.asarray(values, np.float32))


def _associated_file(b, f):
    # AssociatedFile: name 0, description 1, type 2, locale 3, version 4
    name, description, locale, version = (_string(b, f.get(k)) for k in ("name", "description", "locale", "version"))
    return _table(b, {0: name, 1: description, 2: ("int8", FILE_TYPES[f.get("type", "UNKNOWN")]), 3: locale, 4: version})


def _content(b, content):
    # Content: content_properties_type 0, content_properties 1, range 2
    kind, props = content["content_properties_type"], content.get("content_properties", {})
    if kind == "ImageProperties":  # ImageProperties: color_space 0, default_size 1
        properties = _table(b, {0: ("int8", COLOR_SPACES[props.get("color_space", "UNKNOWN")])})
    elif kind == "FeatureProperties":
        properties = _table(b, {})
    else:
        raise ValueError(f"content properties {kind!r} are not written here")
    value_range = content.get("range")
    if value_range is not None:  # ValueRange: min 0, max 1
        value_range = _table(b, {0: ("int32", value_range["min"]), 1: ("int32", value_range["max"])})
    return _table(b, {0: ("uint8", CONTENT_PROPERTIES[kind]), 1: properties, 2: value_range})


def _process_unit(b, unit):
    # ProcessUnit: options_type 0, options 1; NormalizationOptions: mean 0, std 1
    if unit["options_type"] != "NormalizationOptions":
        raise ValueError(f"process unit {unit['options_type']!r} is not written here")
    options = _table(b, {0: _floats(b, unit["options"].get("mean")), 1: _floats(b, unit["options"].get("std"))})
    return _table(b, {0: ("uint8", PROCESS_UNITS[unit["options_type"]]), 1: options})


def _tensor(b, t):
    # TensorMetadata: name 0, description 1, dimension_names 2, content 3, process_units 4, stats 5, associated_files 6
    name, description = _string(b, t.get("name")), _string(b, t.get("description"))
    content = _content(b, t["content"]) if "content" in t else None
    units = _vector(b, [_process_unit(b, u) for u in t["process_units"]]) if "process_units" in t else None
    stats = None
    if "stats" in t:  # Stats: max 0, min 1
        stats = _table(b, {0: _floats(b, t["stats"].get("max")), 1: _floats(b, t["stats"].get("min"))})
    files = _vector(b, [_associated_file(b, f) for f in t["associated_files"]]) if "associated_files" in t else None
    return _table(b, {0: name, 1: description, 3: content, 4: units, 5: stats, 6: files})


def _segmenter_options(activation):
    """The `ImageSegmenterOptions` flatbuffer (image_segmenter_metadata_schema.fbs: activation 0)."""
    b = flatbuffers.Builder(64)
    b.Finish(_table(b, {0: ("int8", ACTIVATIONS[activation])}), file_identifier=SEGMENTER_IDENTIFIER)
    return bytes(b.Output())


def _custom(b, custom):
    # CustomMetadata: name 0, data 1 ([ubyte], force_align 16)
    if custom["name"] != SEGMENTER_METADATA:
        raise ValueError(f"custom metadata {custom['name']!r} is not written here")
    payload = _segmenter_options(custom["data"]["activation"])
    name = b.CreateString(custom["name"])
    b.StartVector(1, len(payload), 16)
    for byte in reversed(payload):
        b.PrependUint8(byte)
    return _table(b, {0: name, 1: b.EndVector()})


def _subgraph(b, g):
    # SubGraphMetadata: name 0, description 1, input_tensor_metadata 2, output_tensor_metadata 3, associated_files 4,
    # input_process_units 5, output_process_units 6, input_tensor_groups 7, output_tensor_groups 8, custom_metadata 9
    inputs = _vector(b, [_tensor(b, t) for t in g.get("input_tensor_metadata", [])])
    outputs = _vector(b, [_tensor(b, t) for t in g.get("output_tensor_metadata", [])])
    custom = _vector(b, [_custom(b, c) for c in g["custom_metadata"]]) if "custom_metadata" in g else None
    return _table(b, {0: _string(b, g.get("name")), 1: _string(b, g.get("description")), 2: inputs, 3: outputs, 9: custom})


def pack_metadata(spec):
    """The `ModelMetadata` flatbuffer (bytes, identifier `M001`) of a `metadata_spec` dict."""
    b = flatbuffers.Builder(1024)
    # ModelMetadata: name 0, description 1, version 2, subgraph_metadata 3, author 4, license 5,
    # associated_files 6, min_parser_version 7
    subgraphs = _vector(b, [_subgraph(b, g) for g in spec["subgraph_metadata"]])
    strings = {slot: _string(b, spec.get(key)) for slot, key in
               ((0, "name"), (1, "description"), (2, "version"), (4, "author"), (5, "license"), (7, "min_parser_version"))}
    b.Finish(_table(b, {**strings, 3: subgraphs}), file_identifier=METADATA_IDENTIFIER)
    return bytes(b.Output())


def populate(model_bytes, spec, files):
    """The `.tflite` bytes with the metadata of `spec` as its `TFLITE_METADATA` buffer (replacing
    one there) and `files` (`{name: text}`) zipped onto the end (replacing any archive there: the
    model flatbuffer is rewritten without what followed it). The same arguments give the same
    bytes."""
    from keras_litenext.litert.flatbuffer import set_metadata_buffer

    data = set_metadata_buffer(model_bytes, METADATA_NAME, pack_metadata(spec))
    out = io.BytesIO()
    out.write(data)
    with zipfile.ZipFile(out, "a") as archive:  # stored, not compressed, as MediaPipe's populator writes it
        for name, text in files.items():
            entry = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))  # a fixed time: the same model, the same bytes
            entry.external_attr = 0o644 << 16
            archive.writestr(entry, text)
    return out.getvalue()
