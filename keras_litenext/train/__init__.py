"""Training: one `train(config)` call from a dataset folder to a finished run folder.

A run folder holds everything a run produces, each file written atomically:

- `config.json`: the settings (a resumed run reuses them; only `RESUMABLE` ones may change);
- `splits.json`: the train/val/test stems (evaluation and resumption reuse them);
- `best.keras`: the inference model with the best validation Dice (plain model, no SeRP heads);
- `backup/`: the training state after the last finished epoch (`RunBackup`), so a killed run
  resumes (`resume=True`) losing at most the epoch in progress; removed once the run is finished;
- `.lock`: held while a process trains into the folder, so a second one is refused;
- `history.csv`, `logs/` (TensorBoard), `curves.png`;
- `metrics.json`: test-split Dice/IoU/precision/recall (per-image mean and std) of `best.keras`;
- `test_overlays.png`: test images with predicted (red) and true (green) outlines.

A classification run (`tasks.ClassificationTask`, an image-folder dataset) has the same loop,
resume, NaN guard, TensorBoard and curves; its best model is the best `val_auc`, and it writes
instead `metrics.json` (accuracy, balanced accuracy, macro AUC, per-class recall and AUC, the
confusion matrix, class names), `confusion_matrix.png` and `test_predictions.csv` (class
probabilities of every test image).

The stages, one module each: `callbacks` (the NaN guard, the best-model checkpoint, `RunBackup`,
the run-folder guard), `resume` (a new or resumed run folder made ready, what a killed run left),
`loop` (`train`, `build_datasets`, `task_loss`), `finish` (`finish_run`, `model_card`), `distributed`
(several processes or hosts on JAX's distributed runtime: `join`, `Group`). What
differs between segmentation and classification is asked of the task (`keras_litenext.tasks`).
`keras-litenext fit` (`keras_litenext.cli.fit`) is the command-line face of `TrainConfig` and
`train`.
"""

from keras_litenext.runs import TrainConfig
from keras_litenext.train.callbacks import BestModelCheckpoint, NonFiniteLossError, RunBackup, StopOnNonFiniteLoss
from keras_litenext.train.finish import finish_run, model_card
from keras_litenext.train.loop import build_datasets, task_loss, train
from keras_litenext.train.resume import RESUMABLE

__all__ = ["BestModelCheckpoint", "NonFiniteLossError", "RESUMABLE", "RunBackup", "StopOnNonFiniteLoss", "TrainConfig",
           "build_datasets", "finish_run", "model_card", "task_loss", "train"]
