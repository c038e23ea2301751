"""Scoring a trained model on a dataset: at each image's own resolution (`evaluate_native`), or a
run on a split of its data (`evaluate_run`, the `keras-litenext evaluate` command as a library
function: Dice, IoU, precision, recall, HD95, ASSD, areas and volumes for segmentation; accuracy,
balanced accuracy, AUC and the confusion matrix for classification)."""

import os
import time
import warnings

import numpy as np

from keras_litenext.data import DatasetError
from keras_litenext.data.intensity import to_float
from keras_litenext.data.medical import SLICE_SEPARATOR
from keras_litenext.inference.batch import Failure
from keras_litenext.inference.predictor import predict_image, size_agnostic
from keras_litenext.metrics import summarize, volumes
from keras_litenext.runs import file_run, open_source
from keras_litenext.tasks import task_for_output


def evaluate_native(model, images, masks, mode="resize", task=None, overlap=0.5, tta=False, spacing=None, progress=None,
                    **score_kwargs):
    """Per-image metrics at each image's own resolution, predicting with `predict_image`.

    Args:
        model: a trained model (fixed input size).
        images, masks: lists of arrays `(H_i, W_i, C)` (uint8, or uint16 of an intensity
            recipe) and `(H_i, W_i, 1)` label maps (from `data.load_pairs(pairs, image_size=None, task=...)`).
        mode: `"resize"`, `"pad"`, `"tile"` or `"gaussian"`.
        task: the run's task (default: read off the model's outputs, `tasks.task_for_output`).
        overlap, tta: as in `predict_image`.
        spacing: None, or one `(row, column)` pixel size per image (HD95, areas in those units).
        progress: a `batch.Progress`-like object (`update(done)`) told after each image.
        **score_kwargs: passed to `task.scores` (e.g. `areas=True`, `surface=True`).

    Returns:
        the dict of `metrics.summarize`, plus `"per_image"` lists and `"predict_seconds"` (the
        prediction time of all images, scoring excluded).
    """
    task = task or task_for_output(model.output_shape)
    dynamic = size_agnostic(model) if mode == "pad" else None
    scores, seconds = {}, 0.0
    for i, (image, mask) in enumerate(zip(images, masks)):
        start = time.perf_counter()
        probs = predict_image(model, to_float(image), mode=mode, dynamic_model=dynamic, overlap=overlap, tta=tta,
                              task=task)
        seconds += time.perf_counter() - start
        kwargs = dict(score_kwargs, spacing=None if spacing is None else spacing[i])
        for name, value in task.scores(mask[None], probs[None], from_logits=False, **kwargs).items():
            scores.setdefault(name, []).append(float(np.asarray(value)[0]))
        if progress is not None:
            progress.update(i + 1)
    return {**summarize(scores), "per_image": scores, "predict_seconds": round(seconds, 3)}


def evaluate_run(source, data=None, split=None, splits=None, masks_suffix=None, mask_threshold=None, mode=None,
                 overlap=0.5, tta=False, skip_bad=False, nonfinite=None, progress=None, log=None):
    """Scores of a run (or a `.keras` file with `data`) on one split of its dataset.

    Args:
        source: a run folder or a `.keras` file.
        data: the dataset folder (default: the run's; required for a `.keras` file).
        split: `"train"`, `"val"`, `"test"` or `"all"` (default: test for a run, all for a file).
        splits: a splits JSON file (default: the run's `splits.json`).
        masks_suffix, mask_threshold: override the run's mask settings.
        mode: segmentation: score at each image's own resolution, predicting with this
            `predict_image` mode (default: at the model's input size, as in training).
        overlap, tta: as in `predict_image` (`tta` needs `mode`).
        skip_bad: skip unusable pairs with a warning (pairing problems included).
        nonfinite: DICOM/NIfTI images: NaN / infinite values, `"minimum"` or `"error"`
            (default: the run's setting).
        progress: a `batch.Progress`-like object told after each image (with `mode`).
        log: called with each line of the report (`task.evaluation_lines`), if given.

    Every readable pair of the split is scored; a pair whose files cannot be read is not the end
    of the job but one entry of `"failures"` (stage `read`, a one-line reason).

    Returns:
        the results (what `--json` writes): the source, data, split and task, then the task's
        scores (`metrics.summarize` with `per_image`, `units` and `volumes` for segmentation;
        `metrics.classification_scores` for classification), and `"failures"`: a list of
        `{"item", "stage", "reason"}` (empty when every pair was read).

    Raises:
        data.DatasetError, OSError, runs.RunError, ValueError, TypeError: naming the problem.
    """
    model, run = open_source(source, data=data)
    if run is None:
        if not data:
            raise ValueError("pass --data: a .keras file does not say which dataset it was trained on.")
        run = file_run(model, data)
    cfg = run.config
    if masks_suffix is not None:
        cfg.masks_suffix = masks_suffix
    if mask_threshold is not None:
        cfg.mask_threshold = mask_threshold
    if splits:
        cfg.splits = splits
    if nonfinite is not None:
        cfg.nonfinite = nonfinite
    task = run.task
    split = split or ("all" if run.path is None else "test")
    with warnings.catch_warnings():  # the unreadable pairs are listed in "failures", not in a note as well
        warnings.filterwarnings("ignore", message=r".* are unusable; skipping them")
        if task.any_size:
            results = _evaluate_label_maps(source, run, model, task, split, mode, overlap, tta, skip_bad, progress)
        else:
            results = _evaluate_images(source, run, model, task, split, mode, skip_bad)
    if log is not None:
        for line in task.evaluation_lines(results):
            log(line)
    return results


def _failures(report, wanted=None):
    """The `"failures"` entries of a load report's unreadable files (`wanted`: only these stems)."""
    lines = report.get("unreadable")
    if lines is None:  # an image folder: "stem: reason" lines
        lines = {line.split(": ", 1)[0]: [line] for line in report.get("skipped", [])}
    out = []
    for stem, items in lines.items():
        for line in items if wanted is None or stem in wanted else ():
            item, _, reason = line.partition(": ")
            out.append(Failure(item, "read", reason).to_dict())
    return out


def _evaluate_label_maps(source, run, model, task, split, mode, overlap, tta, skip_bad, progress=None):
    """Per-image segmentation scores of one split, with volumes for the slices of a volume."""
    if tta and not mode:
        raise ValueError("--tta needs --mode (e.g. --mode gaussian): it predicts each image at its own resolution.")
    images, masks, stems, report = run.load_data(image_size=None if mode else "train", skip_bad=skip_bad or None,
                                                 skip_unreadable=True)
    failures = _failures(report)
    if split != "all":
        splits = run.splits()
        if splits is None:
            raise ValueError(f"--split {split} needs --splits (a .keras file has no splits.json).")
        wanted = set(splits[split])
        failures = _failures(report, {s.split(SLICE_SEPARATOR)[0] for s in wanted})
        keep = [i for i, stem in enumerate(stems) if stem in wanted]
        images = [images[i] for i in keep] if mode else images[keep]
        masks = [masks[i] for i in keep] if mode else masks[keep]
        stems = [stems[i] for i in keep]
    known = report.get("spacing") or {}
    spacing = [known[s][:2] for s in stems] if stems and all(s in known for s in stems) else None  # mm, else pixels
    extra = {"spacing": spacing, "areas": True, "surface": True}
    if mode:
        if progress is not None and hasattr(progress, "total"):
            progress.total = max(len(images), 1)
        results = evaluate_native(model, images, masks, mode=mode, task=task, overlap=overlap, tta=tta, progress=progress,
                                  **extra)
    else:
        results = task.evaluate(model, (to_float(images), masks.astype("float32")), **extra)
    results["units"] = "mm (HD95, ASSD), mm² (areas)" if spacing else "pixels"
    per_volume = volumes(stems, results["per_image"], {s: v[2] for s, v in known.items() if len(v) > 2 and v[2]})
    if per_volume:
        results["volumes"] = per_volume
    return {"model": source, "data": os.path.abspath(run.config.data), "split": split, "mode": mode or "model size",
            "tta": bool(tta), "overlap": overlap if mode == "gaussian" else None, "task": task.name,
            "class_names": list(task.class_names), **results, "failures": failures}


def _evaluate_images(source, run, model, task, split, mode, skip_bad):
    """Scores of an image classifier on one split, each image at the training size."""
    if mode:
        raise ValueError("--mode is for segmentation; a classifier sees every image at its training size.")
    images, labels, stems, report = run.load_data(skip_bad=skip_bad or None, skip_unreadable=True)
    failures = _failures(report)
    if split != "all":
        splits = run.splits()
        if splits is None:
            from keras_litenext.data.folders import split_images

            splits = split_images(stems, labels, fractions=run.config.split, seed=run.config.seed)
        index = {s: i for i, s in enumerate(stems)}
        failures = _failures(report, set(splits[split]))
        failed = {f["item"] for f in failures}
        missing = [s for s in splits[split] if s not in index and s not in failed]
        if missing:
            raise DatasetError(f"{len(missing)} files of the {split} split are not in {run.config.data}: {', '.join(missing[:5])}")
        keep = np.asarray([index[s] for s in splits[split] if s in index], np.int64)
        images, labels = images[keep], labels[keep]
    logits = np.asarray(model.predict(images.astype("float32") / 255.0, batch_size=32, verbose=0))
    return {"model": source, "data": os.path.abspath(run.config.data), "split": split, "task": task.name,
            "class_names": list(task.class_names), **task.scores(labels, logits), "failures": failures}
