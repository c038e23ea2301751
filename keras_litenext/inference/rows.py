"""The rows file of a prediction: one row per image predicted, the same from `predict` and from
the Beam pipeline (`inference.beam`), computed by one function (`prediction_row`).

The columns are the task's (`task.prediction_fields`): a segmentation row is keyed by the image's
path (`image`) and gives its size, per class (background included) its pixels (voxels of a volume),
its area in mm² (a 2-D image of known pixel spacing) and its volume in ml (a volume of known voxel
size), and the model file's sha256; a classification row is the `predictions.csv` row it always
was: `file` (relative to the folder), `predicted`, one probability per class.

CSV (`predictions.csv`): floats with 6 decimals, an unknown value empty, the `csv` module's
dialect (quoting where needed, CRLF). Parquet (`predictions.parquet`, pyarrow): typed columns,
an unknown value null.
"""

import csv
import hashlib
import io
import os

ROWS_FORMATS = ("csv", "parquet")


def prediction_row(task, item, prediction, spacing=None, model_sha256=None):
    """One image's row, `{column: value}` in the order of `columns(task)`.

    Args:
        task: the run's task.
        item: the image's key (its path; a classifier's: relative to the folder predicted).
        prediction: the label map `(H, W)` or slices `(S, H, W)` of a segmentation, a
            classifier's class probabilities `(K,)`.
        spacing: `(dy, dx, dz)` in mm (`dz` None when unknown) or None (`spacing_of`).
        model_sha256: the hex digest of the model file (`model_sha256`).
    """
    return {task.prediction_key: str(item), **task.prediction_values(prediction, spacing=spacing, model_sha256=model_sha256)}


def columns(task):
    """The column names of the rows file, the key first."""
    return [task.prediction_key] + [name for name, _ in task.prediction_fields()]


def spacing_of(data):
    """`(dy, dx, dz)` of a read input (`data.medical.Slices`: pixel spacing and slice thickness),
    or None (an image file, or a DICOM/NIfTI that states no spacing)."""
    spacing = getattr(data, "spacing", None)
    return None if spacing is None else (float(spacing[0]), float(spacing[1]), getattr(data, "thickness", None) or None)


def file_name(task, fmt="csv"):
    """`predictions.csv` or `predictions.parquet`."""
    if fmt not in ROWS_FORMATS:
        raise ValueError(f"rows format must be one of {', '.join(ROWS_FORMATS)}, got {fmt!r}")
    return os.path.splitext(task.prediction_csv)[0] + "." + fmt


def _cell(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6f}"
    return str(value)


def csv_line(task, row, header=False):
    """One CSV line (with its CRLF) of a row, or the header line."""
    buf = io.StringIO()
    names = columns(task)
    csv.writer(buf).writerow(names if header else [_cell(row.get(n)) for n in names])
    return buf.getvalue()


def parquet_schema(task):
    """The pyarrow schema of the rows (pyarrow comes with `keras-litenext[beam]`)."""
    import pyarrow as pa

    kinds = {str: pa.string(), int: pa.int64(), float: pa.float64()}
    return pa.schema([(task.prediction_key, pa.string())] + [(n, kinds[t]) for n, t in task.prediction_fields()])


def write_rows(path, task, rows, fmt="csv"):
    """Write the rows to `path` (atomically), in their order; returns `path`."""
    from keras_litenext.utils import atomic_path

    with atomic_path(path) as tmp:
        if fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            schema = parquet_schema(task)
            pq.write_table(pa.Table.from_pylist([dict(r) for r in rows], schema=schema), tmp)
        else:
            with open(tmp, "w", encoding="utf-8", newline="") as f:
                f.write(csv_line(task, None, header=True))
                f.writelines(csv_line(task, r) for r in rows)
    return path


def previous_rows(path, task, overwrite=False):
    """The rows the rows file `path` holds already ([] when none, or when `overwrite` replaces a
    file of other columns).

    Raises:
        FileExistsError: `path` holds rows of other columns (another model's classes or task) and
            `overwrite` is False.
    """
    if not os.path.exists(path):
        return []
    try:
        rows = read_rows(path)
        names = list(rows[0]) if rows else file_columns(path)
    except Exception:  # noqa: BLE001  (an unreadable old file is not ours to extend)
        rows, names = [], None
    if names == columns(task):
        return rows
    if not overwrite:
        raise FileExistsError(f"{path} holds rows of another model (other columns): pass --overwrite to replace it, "
                              "or another --output.")
    return []


def merge_rows(path, task, rows, fmt="csv", overwrite=False):
    """Write `rows` into the rows file `path`, keeping the rows of other images it holds already
    (several `predict` runs into one folder; `previous_rows`), all sorted by key; returns `path`."""
    key = task.prediction_key
    new = {str(r[key]) for r in rows}
    kept = [r for r in previous_rows(path, task, overwrite) if str(r[key]) not in new]
    return write_rows(path, task, sorted(kept + list(rows), key=lambda r: str(r[key])), fmt)


def file_columns(path):
    """The column names of a rows file."""
    if os.fspath(path).endswith(".parquet"):
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    with open(path, encoding="utf-8", newline="") as f:
        return next(csv.reader(f), [])


def read_rows(path):
    """The rows of a rows file as `{column: text}` dicts (CSV) or typed dicts (Parquet)."""
    if os.fspath(path).endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def sha256_of(read):
    """The hex sha256 of a binary file object's content (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    for block in iter(lambda: read.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()


def model_file(source):
    """The file a model source is: a `.keras` / `.tflite` file as it is, a run folder's `best.keras`,
    a preset folder's weights; None for an in-memory model."""
    if not isinstance(source, (str, os.PathLike)):
        return None
    source = os.fspath(source)
    if not os.path.isdir(source):
        return source
    from keras_litenext.presets import WEIGHTS
    from keras_litenext.runs import BEST

    return os.path.join(source, BEST if os.path.exists(os.path.join(source, BEST)) else WEIGHTS)


def model_sha256(source):
    """The sha256 of a local model source's file (`model_file`), or None."""
    path = model_file(source)
    if path is None or not os.path.isfile(path):
        return None
    with open(path, "rb") as f:
        return sha256_of(f)
