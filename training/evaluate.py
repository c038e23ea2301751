"""Metrics of a trained model on a dataset split: per-image Dice, IoU, precision and recall
(classification runs: accuracy, balanced accuracy, macro AUC, per-class recall, confusion matrix).

    python training/evaluate.py runs/litenext-dsb2018_96-20261122-101500            # its test split
    python training/evaluate.py runs/my-run --split val
    python training/evaluate.py model.keras --data path/to/dataset --split all

A run folder brings its dataset, image size and splits.json; a bare .keras file needs --data
(and evaluates every pair unless --splits is given). By default images and masks are resized to
the model's input size, as in training; with --mode, metrics are computed at each image's own
resolution, predicting with that mode (resize, pad, tile or gaussian, optionally with --tta;
see training/predict.py). Images whose ground truth is empty are left out of the means, as in the
LiteNeXt authors' evaluation; the counts are printed. HD95, ASSD and the per-image areas are in
millimetres (mm²) when every image's file states its pixel spacing (DICOM, NIfTI), else in
pixels; the slices of a volume also get its volume per class (ml, "volumes" in --json).

    python training/evaluate.py runs/my-run --mode gaussian --tta    # sliding window + flips
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter out of the output

import argparse
import sys

from keras_litenext.cli import args as cli
from keras_litenext import data as data_lib
from keras_litenext.inference import MODES, evaluate_native
from keras_litenext.data.intensity import to_float
from keras_litenext.metrics import evaluate_model, volumes
from keras_litenext.runs import RunError, file_run, open_source
from keras_litenext.utils import ensure_writable, write_json


def parser():
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=cli.existing_path, help="run folder of training/fit.py, or a .keras file")
    p.add_argument("--data", type=cli.existing_dir, help="dataset folder (default: the run's)")
    p.add_argument("--split", default=None, choices=("train", "val", "test", "all"), help="default: test for a run, all for a .keras file")
    p.add_argument("--splits", type=cli.existing_file, help="splits JSON (default: the run's splits.json)")
    p.add_argument("--masks-suffix", type=cli.suffix(), help="default: the run's, else none")
    p.add_argument("--mask-threshold", type=cli.int_range(0, 65534), help="default: the run's, else 0")
    p.add_argument("--skip-bad", action="store_true", help="skip unusable pairs with a warning")
    p.add_argument("--mode", choices=MODES, help="evaluate at native resolution, predicting with this mode")
    p.add_argument("--overlap", type=cli.float_range(0.0, 1.0, high_open=True), default=0.5,
                   help="--mode gaussian: overlap of neighbouring windows, in [0, 1) (default: %(default)s)")
    p.add_argument("--tta", action="store_true", help="flip test-time augmentation (4 passes; needs --mode)")
    p.add_argument("--json", type=cli.output_path, help="also write the results to this JSON file")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    try:
        if args.json and os.path.isdir(args.json):
            raise ValueError(f"--json {args.json} is a folder; give a file name.")
        if args.json:
            ensure_writable(os.path.dirname(os.path.abspath(args.json)), "folder of --json")
        model, run = open_source(args.model, data=args.data)
        if run is None:
            if not args.data:
                raise ValueError("pass --data: a .keras file does not say which dataset it was trained on.")
            run = file_run(model, args.data)
        cfg = run.config
        if args.masks_suffix is not None:
            cfg.masks_suffix = args.masks_suffix
        if args.mask_threshold is not None:
            cfg.mask_threshold = args.mask_threshold
        if args.splits:
            cfg.splits = args.splits
        task = run.task
        split = args.split or ("all" if run.path is None else "test")
        if task.kind == "classification":
            return _classification(args, run, model, task, split)
        if args.tta and not args.mode:
            raise ValueError("--tta needs --mode (e.g. --mode gaussian): it predicts each image at its own resolution.")
        images, masks, stems, report = run.load_data(image_size=None if args.mode else "train", skip_bad=args.skip_bad or None)
        if split != "all":
            splits = run.splits()
            if splits is None:
                raise ValueError(f"--split {split} needs --splits (a .keras file has no splits.json).")
            wanted = set(splits[split])
            keep = [i for i, stem in enumerate(stems) if stem in wanted]
            images = [images[i] for i in keep] if args.mode else images[keep]
            masks = [masks[i] for i in keep] if args.mode else masks[keep]
            stems = [stems[i] for i in keep]
        known = report.get("spacing") or {}
        spacing = [known[s][:2] for s in stems] if stems and all(s in known for s in stems) else None  # mm, else pixels
        extra = {"spacing": spacing, "areas": True, "surface": True}
        if args.mode:
            results = evaluate_native(model, images, masks, mode=args.mode, task=task, overlap=args.overlap, tta=args.tta, **extra)
        else:
            kwargs = {"class_names": task.class_names} if task.output_channels > 1 else {}
            results = evaluate_model(model, (to_float(images), masks.astype("float32")), **kwargs, **extra)
        results["units"] = "mm (HD95, ASSD), mm² (areas)" if spacing else "pixels"
        per_volume = volumes(stems, results["per_image"], {s: v[2] for s, v in known.items() if len(v) > 2 and v[2]})
        if per_volume:
            results["volumes"] = per_volume
    except (data_lib.DatasetError, OSError, RunError, ValueError, TypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    results = {"model": args.model, "data": os.path.abspath(cfg.data), "split": split, "mode": args.mode or "model size",
               "tta": bool(args.tta), "overlap": args.overlap if args.mode == "gaussian" else None, "task": task.name, "class_names": list(task.class_names), **results}
    for name in ("dice", "iou", "precision", "recall", "hd95", "assd"):
        if name in results:
            unit = f" {results['units'].split()[0]}" if name in ("hd95", "assd") else ""
            print(f"{name:>9}: {results[name]['mean']:.4f} ± {results[name]['std']:.4f}{unit}")
    for cls in task.foreground_names if task.output_channels > 1 else ():
        key = next((k for k in results if k.startswith("dice_") and k[5:] == _slug(cls)), None)
        if key:
            print(f"{'Dice ' + cls:>9}: {results[key]['mean']:.4f} ± {results[key]['std']:.4f}")
    print(f"{results['counted']} of {results['images']} images counted (empty ground truth left out)")
    if args.json:
        write_json(args.json, results)
    return 0


def _classification(args, run, model, task, split):
    """Scores of a classification run (or classifier .keras file) on one split."""
    import numpy as np

    if args.mode:
        raise ValueError("--mode is for segmentation; a classifier sees every image at its training size.")
    images, labels, stems, _ = run.load_data(skip_bad=args.skip_bad or None)
    if split != "all":
        splits = run.splits()
        if splits is None:
            from keras_litenext.data.folders import split_images

            splits = split_images(stems, labels, fractions=run.config.split, seed=run.config.seed)
        index = {s: i for i, s in enumerate(stems)}
        missing = [s for s in splits[split] if s not in index]
        if missing:
            raise data_lib.DatasetError(f"{len(missing)} files of the {split} split are not in {run.config.data}: {', '.join(missing[:5])}")
        keep = np.asarray([index[s] for s in splits[split]], np.int64)
        images, labels = images[keep], labels[keep]
    logits = np.asarray(model.predict(images.astype("float32") / 255.0, batch_size=32, verbose=0))
    results = {"model": args.model, "data": os.path.abspath(run.config.data), "split": split, "task": task.name,
               "class_names": list(task.class_names), **task.scores(labels, logits)}
    print(f"{'accuracy':>18}: {results['accuracy']:.4f}")
    print(f"{'balanced accuracy':>18}: {results['balanced_accuracy']:.4f}")
    print(f"{'macro AUC':>18}: {results['auc']:.4f}")
    for name, value in results["recall_per_class"].items():
        print(f"{'recall ' + name:>18}: {'-' if value is None else f'{value:.4f}'}")
    print(f"confusion matrix (rows true, columns predicted; {', '.join(task.class_names)}): {results['confusion_matrix']}")
    print(f"{results['images']} images")
    if args.json:
        write_json(args.json, results)
    return 0


def _slug(name):
    from keras_litenext.tasks import _slug as slug

    return slug(name)


if __name__ == "__main__":
    sys.exit(main())
