"""Datasets: from files on disk to the `tf.data` batches that `model.fit` takes.

Segmentation datasets (binary masks or class-index maps) go through, in order:

- `pairs`: the dataset folder (``images/`` and ``masks/``, paired by stem; `find_pairs`, `Pair`)
  and the bundled sample (`sample_data_dir`).
- `decode`: reading one file (OpenCV, as stored) and converting it to the model's channels,
  intensity recipe and size (`read_image`); the parallel reader the scans share.
- `scan`: the pre-flight scan that reads every pair once and names every bad file
  (`load_pairs`, `scan_dataset`).
- `splits`: seeded train/val/test splits and ``splits.json`` (`split_stems`, `save_splits`,
  `load_splits`, `select`).
- `augment`: in-graph augmentation (`augmenter`).
- `pipeline`: the `tf.data` pipeline (`make_dataset`).

Beside them: `errors` (`DatasetError` and how problems are reported), `intensity` (how stored
values become the network's input: the intensity recipe; default 8-bit, ``p / 255``), `medical`
(DICOM and NIfTI slices and label volumes; a volume gives one example per slice) and `folders`
(image-classification datasets: one folder of images per class).

Bad-input policy: every problem is reported as a `DatasetError` (a `ValueError`) whose message
names the file(s) and says what is wrong, never as a TensorFlow or OpenCV traceback. The scan
collects *all* problems before raising, one line per file. With ``skip_bad=True`` unusable files
are skipped with one `warnings.warn` line that gives the count, and the scan fails only if
nothing usable is left.
"""

from keras_litenext.data.augment import augmenter
from keras_litenext.data.decode import read_image
from keras_litenext.data.errors import DatasetError
from keras_litenext.data.medical import IMAGE_EXTENSIONS
from keras_litenext.data.pairs import Pair, find_pairs, sample_data_dir
from keras_litenext.data.pipeline import make_dataset
from keras_litenext.data.scan import load_pairs, scan_dataset
from keras_litenext.data.splits import (
    SPLIT_NAMES,
    load_splits,
    save_splits,
    select,
    split_stems,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "SPLIT_NAMES",
    "DatasetError",
    "Pair",
    "augmenter",
    "find_pairs",
    "load_pairs",
    "load_splits",
    "make_dataset",
    "read_image",
    "sample_data_dir",
    "save_splits",
    "scan_dataset",
    "select",
    "split_stems",
]
