"""Runs: the settings of a training run and the folder it leaves behind.

- `settings`: `TrainConfig`, the one typed settings object (command line, `--config` file and a
  resumed run's `config.json` merged into it, checked once), and `RunError`;
- `checks`: the value types the settings are checked with (the command lines' flag types too);
- `folder`: `Run`, the one reader and writer of a run folder (its file names, lock, splits and
  data), `open_source`, `file_run`, `load_model_file`.
"""

from keras_litenext.runs.folder import (
    BACKUP,
    BEST,
    CONFIG,
    HISTORY,
    LOCK,
    METRICS_FILE,
    MODEL_CARD,
    SPLITS,
    Run,
    file_run,
    load_model_file,
    open_source,
)
from keras_litenext.runs.settings import SETTING_TYPES, RunError, TrainConfig

__all__ = [
    "BACKUP", "BEST", "CONFIG", "HISTORY", "LOCK", "METRICS_FILE", "MODEL_CARD", "SETTING_TYPES", "SPLITS", "Run", "RunError",
    "TrainConfig", "file_run", "load_model_file", "open_source",
]
