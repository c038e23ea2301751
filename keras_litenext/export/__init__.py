"""Run-level export: from a training run to deployable `.tflite` files with a report and a gate.

`export(model_or_run, output, ...)` (and `export_run(source, ...)`, the same over a run folder or
a `.keras` file, with `ExportOptions`' fields) fine-tunes the model with quantization-aware
training, converts it to int8 (QAT and PTQ), fp16 and fp32 files with `keras_litenext.litert`,
scores every file with LiteRT on the run's test split through the run's task (binary or
multi-class, per class; a classifier by accuracy, balanced accuracy and macro AUC), writes the
I/O contract of each file and `report.md`, and applies the task's quality gate; a file that
misses it gets further QAT attempts (`retry_plan`, `ExportOptions.qat_retries`), kept by their
validation score. A
classification run's gate (`classification_gate`) fails when the int8 file loses more than
`max_accuracy_drop` points of accuracy (default 1.0) or more than `max_auc_drop` of macro AUC
(default 0.01, i.e. one AUC point; a rank score moves less than accuracy under quantization
noise, so the same 1-point budget on a 0-100 scale).

- `source`: what to export (a run folder, or a `.keras` file with its data);
- `scoring`: scores of Keras models and files on the test split;
- `contract`: the I/O contract of a file and its metadata description;
- `gate`: the quality gates; `report`: `report.json` and `report.md`;
- `pipeline`: `ExportOptions`, `export_run`, `export`;
- `finetune`: QAT fine-tuning of a run; `metadata`: TFLite metadata for MediaPipe Tasks
  (`tflite_metadata` writes its flatbuffer, no MediaPipe needed) and the MediaPipe check.

The TFLite mechanics live in `keras_litenext.litert`, the run folder in `keras_litenext.runs`,
the meaning of the output (and which score, gate and report a file gets) in
`keras_litenext.tasks`.
"""

from keras_litenext.export.contract import io_contract
from keras_litenext.export.gate import (
    classification_drops,
    classification_gate,
    dice_drops,
    quality_gate,
)
from keras_litenext.export.pipeline import (
    Exported,
    ExportOptions,
    export,
    export_run,
    retry_plan,
)
from keras_litenext.export.report import report_markdown
from keras_litenext.export.scoring import evaluate_tflite, score_logits
from keras_litenext.export.source import ExportError, Source, load_source
from keras_litenext.litert import FILE_KINDS, ConversionError

__all__ = [
    "FILE_KINDS",
    "ConversionError",
    "ExportError",
    "ExportOptions",
    "Exported",
    "Source",
    "classification_drops",
    "classification_gate",
    "dice_drops",
    "evaluate_tflite",
    "export",
    "export_run",
    "io_contract",
    "load_source",
    "quality_gate",
    "report_markdown",
    "retry_plan",
    "score_logits",
]
