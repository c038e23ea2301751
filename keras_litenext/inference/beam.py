"""`predict` at archive scale: an Apache Beam pipeline around `RunInference`, for DirectRunner on one
machine or Dataflow, Flink and Spark on many (`keras-litenext predict ... --runner`, docs/beam.md).

    match (fileio.MatchFiles) -> select images and DICOM/NIfTI files -> spread (Reshuffle)
      -> read (fileio.ReadMatches: the bytes through Beam's FileSystems; decoded as `predict` does)
      -> RunInference (KeyedModelHandler of `beam_handlers`: a run folder, .keras, preset or .tflite)
      -> write each mask in the input's format and geometry, as `predict` names it
      -> predictions.csv / .parquet (one row per image, `inference.rows`) and failures.csv

Every stage calls the function `predict` calls (`inference.folder`), so masks, label files and rows
are the same as `predict_folder`'s on the same files. An input that cannot be read, predicted or
written goes to the dead-letter output (`failures.csv`, `item,stage,reason`, as `batch.write_failures`
writes it; `RunInference.with_exception_handling` catches a failed batch); the pipeline goes on.

Outputs mirror the inputs' folders below the pattern's fixed part (`pattern_base`): `imgs/*.png`
writes flat into the output as `predict` does, `imgs/**` keeps the sub-folders. The rows come in no
particular order (each worker writes as it goes); `failures.csv` is sorted by item.
"""

import csv
import dataclasses
import functools
import io
import os
import shutil
import tempfile
import uuid

import apache_beam as beam
import numpy as np
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

from keras_litenext.inference.batch import FAILURES_CSV, BatchResult, Failure
from keras_litenext.inference.beam_handlers import (
    NAMESPACE,
    Item,
    ModelSource,
    PredictOptions,
    failure,
    handler_for,
    is_local,
    stage,
)

FAILED = "failed"
GLOB = "*?["


def pattern_base(pattern):
    """The fixed folder of a file pattern, with its separator: `gs://b/scans/` of `gs://b/scans/**/*.dcm`."""
    cut = min([pattern.find(c) for c in GLOB if c in pattern] or [len(pattern)])
    head = pattern[:cut]
    return head[: max(head.rfind("/"), head.rfind(os.sep)) + 1]


def relative(base, path):
    """`path` below `base`, "/"-separated (a classifier's `file` column, the output's sub-folder)."""
    return (path[len(base):] if path.startswith(base) else os.path.basename(path)).replace(os.sep, "/")


def stem_group(base, path):
    """What outputs are told apart within: the sub-folder and `folder.stem_key`."""
    from keras_litenext.inference.folder import stem_key

    return os.path.dirname(relative(base, path)), stem_key(path)


def failure_line(item):
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow((item.item, item.stage, item.reason))
    return buf.getvalue()


class _Staging(beam.DoFn):
    """A DoFn with a worker-local folder for staged copies."""

    def setup(self):
        self.folder = tempfile.mkdtemp(prefix="keras-litenext-beam-")

    def teardown(self):
        shutil.rmtree(getattr(self, "folder", ""), ignore_errors=True)


class SelectInputs(_Staging):
    """The matched files `predict` would take: by extension, or a DICOM known by its content (the
    file is staged to be looked at); a classifier takes image files only."""

    def __init__(self, medical=True):
        self.medical = medical

    def process(self, metadata):
        from keras_litenext.data import IMAGE_EXTENSIONS
        from keras_litenext.data.medical import MEDICAL_EXTENSIONS, is_medical

        path = metadata.path
        name = os.path.basename(path).lower()
        if name.endswith(IMAGE_EXTENSIONS + (MEDICAL_EXTENSIONS if self.medical else ())):
            yield path
        elif self.medical and not path.endswith("/"):
            local = stage(path, self.folder)
            try:
                if is_medical(local):
                    yield path
            finally:
                shutil.rmtree(os.path.dirname(local), ignore_errors=True)


class ReadInputs(_Staging):
    """Stage `read`: each file's bytes through Beam's FileSystems (`fileio.ReadMatches`), decoded as
    `predict` reads it (`beam_handlers.Reader`); emits `(path, Item)`, or a `Failure` to `failed`."""

    def __init__(self, reader):
        self.reader = reader

    def process(self, readable):
        path = readable.metadata.path
        item = Item(path, None)
        try:
            item.local = stage(path, self.folder, readable)
            item.data = self.reader.read(item.local)
        except Exception as err:  # noqa: BLE001  (the file's one line)
            yield beam.pvalue.TaggedOutput(FAILED, failure(item, "read", err))
            drop(item)
            return
        if isinstance(item.data, np.ndarray):
            drop(item)  # an image travels decoded; a DICOM/NIfTI keeps its copy for its labels' geometry
        yield path, item


def drop(item):
    """Remove an item's staged copy."""
    if item.local:
        shutil.rmtree(os.path.dirname(item.local), ignore_errors=True)
        item.local = ""


class LabelSeries(dict):
    """Source series UID -> label series UID, the same on every worker of one job (derived from the
    job's salt): the label files of one DICOM series form one series, as with `predict`."""

    def __init__(self, salt):
        super().__init__()
        self.salt = salt

    def setdefault(self, key, default=None):
        from pydicom.uid import generate_uid

        if key not in self:
            self[key] = generate_uid(entropy_srcs=[self.salt, str(key)])
        return self[key]


class WriteOutputs(_Staging):
    """Stage `write`: a segmentation's mask and overlay (an image) or label file (DICOM/NIfTI, in
    its geometry) under the output, named as `predict` names them; emits the image's row
    (`rows.prediction_row`), or a `Failure` to the `failed` output."""

    def __init__(self, reader, base, output, digest, salt, overwrite=False):
        self.reader, self.base, self.output, self.digest = reader, base, output, digest
        self.salt, self.overwrite = salt, overwrite

    def setup(self):
        super().setup()
        self.series = LabelSeries(self.salt)
        self.done = Metrics.counter(NAMESPACE, "images_done")
        self.written = Metrics.counter(NAMESPACE, "files_written")
        self.shared, self.shared_of = frozenset(), None

    def _shared(self, side_input):
        """The side input of shared stems as a set, made once per side input (not per element)."""
        if side_input is not self.shared_of:
            self.shared, self.shared_of = frozenset(map(tuple, side_input)), side_input
        return self.shared

    def process(self, keyed, shared=()):
        from keras_litenext.inference.rows import prediction_row, spacing_of

        path, result = keyed
        item, prediction, task = result.example, result.inference, self.reader.task
        if isinstance(prediction, Failure):
            drop(item)
            yield beam.pvalue.TaggedOutput(FAILED, prediction)
            return
        if not task.writes_label_files:  # a classifier: its row, keyed as predict's CSV
            self.done.inc()
            yield prediction_row(task, relative(self.base, path), prediction)
            return
        targets, work = [], None
        try:
            made, targets, work = self._plan(item, self._shared(shared))
            self._write(item, prediction, made, targets, work)
        except Exception as err:  # noqa: BLE001  (the file's one line; its outputs all there or none)
            stale = [] if isinstance(err, FileExistsError) else [t for t in targets if FileSystems.exists(t)]
            if stale:
                FileSystems.delete(stale)
            yield beam.pvalue.TaggedOutput(FAILED, failure(item, "write", err))
            return
        finally:
            drop(item)
            if work and work.startswith(self.folder):
                shutil.rmtree(work, ignore_errors=True)
        self.done.inc()
        self.written.inc(len(targets))
        yield prediction_row(task, path, prediction, spacing_of(item.data), self.digest)

    def _plan(self, item, shared):
        """`(files made, their final paths, the folder they are made in)`, as `predict` names them."""
        from keras_litenext.data.medical import label_path
        from keras_litenext.inference.folder import image_outputs, output_stem

        sub = os.path.dirname(relative(self.base, item.path))
        folder = FileSystems.join(self.output, *sub.split("/")) if sub else self.output
        if is_local(folder):
            work = folder
            os.makedirs(folder, exist_ok=True)
        else:
            work = tempfile.mkdtemp(dir=self.folder)
        if not isinstance(item.data, np.ndarray):  # DICOM/NIfTI slices: a label file in the source's geometry
            if not item.local or not os.path.exists(item.local):  # read by another worker: staged again here
                item.local = stage(item.path, self.folder)
            made = [label_path(item.local, work)]
        else:
            made = image_outputs(work, output_stem(item.path, stem_group(self.base, item.path) in shared))
        targets = [FileSystems.join(folder, os.path.basename(m)) for m in made]
        existing = [t for t in targets if FileSystems.exists(t)]
        if existing and not self.overwrite:
            raise FileExistsError(f"{existing[0]} exists: pass --overwrite to replace it, or another --output")
        return made, targets, work

    def _write(self, item, labels, made, targets, work):
        from keras_litenext.inference.folder import write_image, write_medical

        if item.local:
            write_medical(item.local, labels, made[0], self.reader.slice_axis, series_uid=self.series)
        else:
            write_image(self.reader.task, item.data, labels, *made)
        for made_file, target in zip(made, targets):
            if made_file != target:  # made locally for another file system: copied there
                with open(made_file, "rb") as src, FileSystems.create(target, compression_type=CompressionTypes.UNCOMPRESSED) as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)


def batch_failures(failed):
    """The items of a batch that `RunInference` could not run (its dead-letter output), each a `Failure`."""
    batch, err = failed
    for element in batch:
        key, item = element if isinstance(element, tuple) else (getattr(element, "path", "?"), element)
        yield failure(item if isinstance(item, Item) else Item(str(key), None), "predict", err)


def build(pipeline, source, pattern, output, reader, digest, options=None, fmt="csv", overwrite=False):
    """Add the prediction of every file matching `pattern` to `pipeline` (module docstring); the
    outputs go under `output`. `reader`: the model's `beam_handlers.Reader`; `digest`: the model
    file's sha256 for the rows."""
    from keras_litenext.inference.rows import csv_line, file_name, parquet_schema

    task, base, options = reader.task, pattern_base(pattern), options or PredictOptions()
    paths = (pipeline
             | "Match" >> fileio.MatchFiles(pattern, empty_match_treatment=fileio.EmptyMatchTreatment.DISALLOW)
             | "Select" >> beam.ParDo(SelectInputs(medical=task.writes_label_files)))
    shared = (paths
              | "StemGroups" >> beam.Map(lambda path: (stem_group(base, path), 1))
              | "CountStems" >> beam.CombinePerKey(sum)
              | "Shared" >> beam.Filter(lambda kv: kv[1] > 1)
              | "SharedKeys" >> beam.Keys())
    read = (paths
            | "Spread" >> beam.Reshuffle()
            | "Open" >> fileio.ReadMatches()
            | "Read" >> beam.ParDo(ReadInputs(reader)).with_outputs(FAILED, main="items"))
    predicted, dead = read.items | "Predict" >> RunInference(KeyedModelHandler(handler_for(source, options))).with_exception_handling()
    salt = uuid.uuid4().hex
    written = (predicted
               | "Write" >> beam.ParDo(WriteOutputs(reader, base, output, digest, salt, overwrite), shared=beam.pvalue.AsList(shared))
               .with_outputs(FAILED, main="rows"))
    failed_batches = dead.failed_inferences | "BatchFailures" >> beam.FlatMap(batch_failures)
    (((read[FAILED], written[FAILED], failed_batches) | "Failures" >> beam.Flatten())
     | "FailureLines" >> beam.Map(failure_line)
     | "WriteFailures" >> beam.io.WriteToText(FileSystems.join(output, "failures"), file_name_suffix=".csv", num_shards=1,
                                              shard_name_template="", header="item,stage,reason\n", append_trailing_newlines=False))
    stem = os.path.splitext(file_name(task, fmt))[0]
    if fmt == "parquet":
        written.rows | "WriteRows" >> beam.io.WriteToParquet(FileSystems.join(output, stem), parquet_schema(task), file_name_suffix=".parquet",
                                                             num_shards=1, shard_name_template="")
    else:
        (written.rows
         | "RowLines" >> beam.Map(functools.partial(csv_line, task))
         | "WriteRows" >> beam.io.WriteToText(FileSystems.join(output, stem), file_name_suffix=".csv", num_shards=1, shard_name_template="",
                                              header=csv_line(task, None, header=True), append_trailing_newlines=False))
    return pipeline


@dataclasses.dataclass
class PipelineResult(BatchResult):
    """A `batch.BatchResult` of a pipeline: `written` lists the rows file; `files_written` counts the
    masks and label files (None when the runner reports no metrics)."""

    files_written: int = None


def describe(source, options):
    """`(Reader, sha256 of the model file)` of a model source, read on the launching machine (the
    model loaded once, so that a bad source fails in one line before the pipeline starts)."""
    from keras_litenext.inference.rows import model_file, sha256_of
    from keras_litenext.presets import preset_path

    folder = tempfile.mkdtemp(prefix="keras-litenext-model-")
    try:
        predictor = handler_for(source, options).opener(source, options, folder)
        location = model_file(preset_path(source.location)) if source.preset else source.location
        if not source.tflite and not source.location.lower().endswith(".keras") and not source.preset:
            from keras_litenext.runs import BEST

            location = FileSystems.join(source.location, BEST)
        with FileSystems.open(location, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            return predictor.reader, sha256_of(f)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run(source, pattern, output, options=None, fmt="csv", overwrite=False, pipeline_options=None):
    """Run the pipeline (`build`) to its end and return a `PipelineResult` (the failures read back
    from `failures.csv`, which is sorted, or removed when none failed).

    Args:
        source: a `ModelSource`, or a path (run folder, `.keras`, `.tflite`; any Beam filesystem).
        pattern: the inputs, a file pattern on any Beam filesystem (`scans/**/*.dcm`, `gs://b/x/*`).
        output: the folder for the results (local or on a Beam filesystem).
        options: `PredictOptions` (default: `predict`'s defaults).
        fmt: the rows file: `"csv"` or `"parquet"`.
        overwrite: replace outputs that exist (else such a file is a failure of its input).
        pipeline_options: Beam's `PipelineOptions` (runner and its options; default DirectRunner).

    Raises:
        FileExistsError: the rows file exists and `overwrite` is False.
        ValueError, OSError: the model cannot be opened, nothing matches, the runner fails.
    """
    from apache_beam.options.pipeline_options import PipelineOptions

    from keras_litenext.inference.rows import file_name
    from keras_litenext.utils import ensure_writable

    source = source if isinstance(source, ModelSource) else ModelSource(os.fspath(source))
    if is_local(source.location) and os.path.exists(source.location):  # the workers may start in another folder
        source = ModelSource(os.path.abspath(source.location), source.preset)
    options = options or PredictOptions()
    if is_local(pattern):
        pattern = os.path.abspath(pattern)
    if is_local(output):
        output = ensure_writable(os.path.abspath(output))
    reader, digest = describe(source, options)
    rows_path = FileSystems.join(output, file_name(reader.task, fmt))
    if FileSystems.exists(rows_path) and not overwrite:
        raise FileExistsError(f"{rows_path} exists: pass --overwrite to replace it, or another --output.")
    pipeline = beam.Pipeline(options=pipeline_options or PipelineOptions([]))
    build(pipeline, source, pattern, output, reader, digest, options, fmt, overwrite)
    result = pipeline.run()
    state = result.wait_until_finish()
    if str(state).split(".")[-1] not in ("DONE", "None"):
        raise OSError(f"the pipeline ended {state}")
    failures = _read_back_failures(FileSystems.join(output, FAILURES_CSV))
    done, files = _counters(result)
    if done is None:
        done = _count_rows(rows_path)
    return PipelineResult([rows_path] if done else [], done, failures, output, files)


def _read_back_failures(path):
    """The failures the workers wrote, sorted by item and written back (removed when none)."""
    from keras_litenext.inference.batch import write_failures

    if not FileSystems.exists(path):
        return []
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        rows = list(csv.DictReader(io.StringIO(f.read().decode("utf-8"))))
    failures = sorted((Failure(r["item"], r["stage"], r["reason"]) for r in rows), key=lambda f: (f.item, f.stage))
    if is_local(path):
        write_failures(path, failures)
    elif not failures:
        FileSystems.delete([path])
    else:
        with FileSystems.create(path, mime_type="text/csv", compression_type=CompressionTypes.UNCOMPRESSED) as f:
            f.write(("item,stage,reason\n" + "".join(failure_line(x) for x in failures)).encode("utf-8"))
    return failures


def _counters(result):
    """`(images done, files written)` from the runner's metrics, or `(None, None)`."""
    from apache_beam.metrics.metric import MetricsFilter

    try:
        counters = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]
    except Exception:  # noqa: BLE001  (a runner without metrics)
        return None, None
    values = {}
    for counter in counters:
        values[counter.key.metric.name] = values.get(counter.key.metric.name, 0) + (counter.committed or 0)
    return values.get("images_done", 0), values.get("files_written", 0)


def _count_rows(path):
    if not FileSystems.exists(path):
        return 0
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            return pq.ParquetFile(io.BytesIO(f.read())).metadata.num_rows
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return max(len(list(csv.reader(io.StringIO(f.read().decode("utf-8"))))) - 1, 0)
