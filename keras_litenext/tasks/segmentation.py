"""What the per-pixel tasks share (`binary.py`, `multiclass.py`): loss and metric wiring, scores,
splits and datasets of image/mask pairs, test artifacts, the export report."""

import os

import numpy as np

from keras_litenext.notes import note
from keras_litenext.tasks.base import (
    Task,
    _slug,
)


class SegmentationTask(Task):
    """Common part of the per-pixel tasks. Subclasses set `name`, `activation`, `output_channels`."""

    kind = "segmentation"
    monitor = "val_dice"  # mean Dice over the foreground classes, per image
    default_loss = "mwl"
    _classes_hint = " (background included)"

    @property
    def foreground_names(self):
        return self.class_names[1:]

    # -- evaluation and prediction
    any_size = True  # predicted and scored at each image's own size (`predict_image` modes)
    writes_label_files = True  # a prediction is written per image: <stem>_mask.png and <stem>_overlay.png (or a label file)
    prediction_csv = "predictions.csv"  # and one row per image (`inference.rows`): the area of each class
    prediction_key = "image"  # the rows' first column: the image's path

    def prediction_fields(self):
        """`[(column, type)]` of a per-image prediction row after its key (`inference.rows`): the size,
        then per class (background included) its pixels (voxels of a volume), its area in mm² (a 2-D
        image whose pixel spacing is known) and its volume in ml (a volume whose voxel size is known),
        then the model file's sha256."""
        slugs = [_slug(n) for n in self.class_names]
        return ([("width", int), ("height", int), ("slices", int)] + [(f"pixels_{s}", int) for s in slugs]
                + [(f"mm2_{s}", float) for s in slugs] + [(f"ml_{s}", float) for s in slugs] + [("model_sha256", str)])

    def prediction_values(self, labels, spacing=None, model_sha256=None):
        """The values of `prediction_fields` for a label map `(H, W)` or label slices `(S, H, W)`;
        `spacing`: `(dy, dx, dz)` in mm (`dz` may be None) or None; the areas in mm² and volumes in
        ml are None where the spacing does not give them."""
        volume = np.asarray(labels)
        volume = volume[None] if volume.ndim == 2 else volume
        count, height, width = volume.shape
        pixels = np.bincount(volume.ravel().astype(np.int64), minlength=self.num_classes)[: self.num_classes]
        dy, dx, dz = spacing if spacing is not None else (None, None, None)
        area = float(dy) * float(dx) if dy and dx else None
        mm2 = area if area and count == 1 else None
        ml = area * float(dz) / 1000.0 if area and dz and count > 1 else None
        values = {"width": int(width), "height": int(height), "slices": int(count)}
        slugs = [_slug(n) for n in self.class_names]
        values.update({f"pixels_{s}": int(n) for s, n in zip(slugs, pixels)})
        values.update({f"mm2_{s}": None if mm2 is None else round(int(n) * mm2, 6) for s, n in zip(slugs, pixels)})
        values.update({f"ml_{s}": None if ml is None else round(int(n) * ml, 6) for s, n in zip(slugs, pixels)})
        values["model_sha256"] = model_sha256 or ""
        return values

    def evaluate(self, model, data, **kwargs):
        """`metrics.evaluate_model` of `model` on `(images, masks)`, with this task's class names."""
        from keras_litenext.metrics import evaluate_model

        if self.output_channels > 1:
            kwargs.setdefault("class_names", self.class_names)
        return evaluate_model(model, data, **kwargs)

    def evaluation_lines(self, results):
        """What an evaluation reports: the mean ± std of each metric (HD95, ASSD in `results["units"]`),
        the Dice per foreground class, and how many images were counted."""
        lines = []
        for name in ("dice", "iou", "precision", "recall", "hd95", "assd"):
            if name in results:
                unit = f" {results['units'].split()[0]}" if name in ("hd95", "assd") else ""
                lines.append(f"{name:>9}: {results[name]['mean']:.4f} ± {results[name]['std']:.4f}{unit}")
        for cls in self.foreground_names if self.output_channels > 1 else ():
            key = next((k for k in results if k.startswith("dice_") and k[5:] == _slug(cls)), None)
            if key:
                lines.append(f"{'Dice ' + cls:>9}: {results[key]['mean']:.4f} ± {results[key]['std']:.4f}")
        lines.append(f"{results['counted']} of {results['images']} images counted (empty ground truth left out)")
        return lines

    def fractions_line(self, labels, voxel=None):
        """The share of each foreground class in a label map, or its volume in ml given the voxel
        volume in mm³."""
        return ", ".join(
            (f"{n} {np.count_nonzero(labels == c) * voxel / 1000.0:.2f} ml" if voxel else f"{n} {np.mean(labels == c):.1%}")
            for c, n in enumerate(self.class_names) if c)

    # -- training -----------------------------------------------------------------------------
    def loss(self, name=None, mwl_weights=None, mwl_kernel=7, class_weights=None):
        """The named loss (default `default_loss`) for this task's output, wired from run settings."""
        from keras_litenext.losses import get_loss

        name = (name or self.default_loss).strip().lower().replace("-", "_")
        kwargs = {}
        if name == "mwl":
            if mwl_weights is not None:
                w_m, w_o, w_b = (float(w) for w in mwl_weights)
                kwargs.update(w_margin=w_m, w_object=w_o, w_background=w_b)
            kwargs["kernel_size"] = int(mwl_kernel)
        if class_weights is not None:
            if self.output_channels == 1:
                raise ValueError("class_weights apply to the multiclass task only.")
            kwargs["class_weights"] = [float(w) for w in class_weights]
        return get_loss(name, num_classes=self.output_channels, **kwargs)

    def metrics(self):
        """Streaming Keras metrics for `compile`: `dice` (monitored), `iou`, `precision`, `recall`."""
        from keras_litenext.metrics import get_metrics

        if self.output_channels == 1:
            return get_metrics()
        return get_metrics(num_classes=self.output_channels, class_names=self.class_names)

    # -- decoding predictions -----------------------------------------------------------------
    def scores(self, masks, logits, **kwargs):
        """Per-image metrics (`metrics.per_image_scores`) of label maps `masks` and logits."""
        from keras_litenext.metrics import per_image_scores

        if self.output_channels > 1:
            kwargs.setdefault("class_names", self.class_names)
        return per_image_scores(masks, logits, **kwargs)

    def summary_line(self, summary):
        """One human line of a metrics summary (`metrics.summarize` output)."""
        dice, iou = summary["dice"], summary["iou"]
        line = f"Dice {dice['mean']:.4f} ± {dice['std']:.4f}, IoU {iou['mean']:.4f}"
        if self.output_channels > 1:
            parts = [f"{n} {summary[f'dice_{_slug(n)}']['mean']:.4f}" for n in self.foreground_names if f"dice_{_slug(n)}" in summary]
            line += " (per class Dice: " + ", ".join(parts) + ")"
        return line

    # -- training and run folder
    item_word = "pairs"
    uses_masks = True
    uses_intensity = True  # stored, so config.json says how pixels map
    loss_settings = ("mwl_weights", "mwl_kernel", "class_weights")

    @classmethod
    def resolve_settings(cls, config):
        """Fill a run's `class_names` / `num_classes` from `classes.json` beside the data, and read
        its palette file into it (so the run folder alone says how masks decode); returns the task."""
        from keras_litenext.tasks.classes import read_classes_json, read_palette

        if isinstance(config.palette, str):
            config.palette = {"{},{},{}".format(*c): i for c, i in read_palette(config.palette).items()}
        if config.class_names is None:
            names = read_classes_json(config.data)
            if names is not None and (config.num_classes is None or int(config.num_classes) == len(names)):
                config.class_names = names
            elif names is not None:
                raise ValueError(
                    f"--num-classes {config.num_classes} disagrees with {os.path.join(config.data, 'classes.json')} "
                    f"({len(names)} classes: {', '.join(names)})."
                )
        if config.class_names is not None:
            config.class_names = [str(n) for n in config.class_names]
            config.num_classes = len(config.class_names)
        task = config.task_spec  # validates the combination
        config.task, config.num_classes, config.class_names = task.name, task.num_classes, list(task.class_names)
        return task

    def file_settings(self, model, settings):
        """Settings a bare `.keras` file implies (`runs.file_run`): its class count, unless given."""
        if settings.get("num_classes") is None and settings.get("class_names") is None:
            return {"num_classes": self.num_classes}
        return {}

    def default_image_size(self, data, size_multiple):
        """The training size when none is given."""
        return 256

    def split(self, stems, masks, fractions, seed):
        """A seeded train/val/test split of the stems (slices of one volume stay together)."""
        from keras_litenext.data.splits import split_stems

        return split_stems(stems, fractions=fractions, seed=seed)

    def augmenter(self, seed=None, **options):
        """Flips, rotation, zoom, brightness/contrast and blur, moving the mask with the image;
        `options` (`data.augmenter` keyword arguments) change those defaults."""
        from keras_litenext.data.augment import augmenter

        return augmenter(seed=seed, **options)

    def dataset(self, images, masks, batch_size, augment=None, shuffle=False, seed=None, drop_remainder=False):
        """A `tf.data` pipeline of `(image, target)` batches in this task's target form."""
        from keras_litenext.data.pipeline import make_dataset

        return make_dataset(images, masks, batch_size, augment=augment, shuffle=shuffle, seed=seed, drop_remainder=drop_remainder,
                            binary=self.output_channels == 1)

    def warn_about_targets(self, arrays, data):
        """One warning when masks hold no foreground: all of them (nothing to learn), or all of the
        val or test split (its Dice is undefined)."""
        empty = {name: not np.any(masks) for name, (_, masks) in arrays.items()}
        if all(empty.values()):
            note(f"every mask in {data} is empty (no foreground pixel): there is nothing to learn and the Dice is "
                          "undefined (nan); check --masks-suffix and --mask-threshold", stacklevel=3)
        elif empty["val"] or empty["test"]:
            which = " and ".join(n for n in ("val", "test") if empty[n])
            note(f"every mask of the {which} split of {data} is empty: its Dice is undefined (nan)"
                          + (" and best.keras cannot be chosen by it" if empty["val"] else "")
                          + "; use more data or another --seed / --split", stacklevel=3)

    def data_line(self, report):
        """What the training's `Data:` line says of the classes."""
        return f"; {self.name}: {', '.join(self.class_names)}" if self.output_channels > 1 else ""

    def test_results(self, masks, logits, spacing=None):
        """The test-split part of `metrics.json`: per-image scores summarised (mean, std) and listed
        (`per_image`). With `spacing` (one pixel size per test image) HD95 is in those units (mm),
        the per-image areas and ASSD are added, and `units` says so."""
        from keras_litenext.metrics import summarize

        physical = {} if spacing is None else {"spacing": spacing, "areas": True, "surface": True}
        scores = self.scores(masks, logits, **physical)
        return {**({"units": "mm (HD95, ASSD), mm² (areas)"} if physical else {}), **summarize(scores),
                "per_image": {k: np.asarray(v).tolist() for k, v in scores.items()}}

    def test_count(self, results):
        return f"{results['counted']} of {results['images']} test images"

    def write_test_artifacts(self, run, images, masks, logits, results):
        """`test_overlays.png`: up to 16 test images with predicted (red) and true (green) outlines."""
        from keras_litenext.visualize import overlay_labels, save_grid

        n = min(16, len(images))
        if n:
            labels = self.labels(logits)
            tiles = [overlay_labels(images[i], labels[i], self.num_classes, masks[i][..., 0]) for i in range(n)]
            save_grid(run.file("test_overlays.png"), tiles, legend=self.class_names if self.num_classes > 2 else None)

    # -- export
    mediapipe_task = "ImageSegmenter"
    metadata_kind = "segmentation"

    def monitor_score(self, masks, logits):
        """The mean per-image foreground Dice of logits (NaN when no image holds a foreground
        class): what QAT ranks its candidates by."""
        dice = np.asarray(self.scores(masks, logits, hd95=False)["dice"], np.float64)
        dice = dice[~np.isnan(dice)]
        return float(dice.mean()) if dice.size else float("nan")

    def test_scores(self, masks, logits, threshold=0.5, empty="skip", hd95=True):
        """Per-image scores of logits summarised (`export.scoring.summarised`), as files and Keras
        models are scored in an export; `threshold` is the binary task's."""
        from keras_litenext.export.scoring import summarised

        kwargs = {"empty": empty, "hd95": hd95}
        if self.output_channels == 1:
            kwargs["threshold"] = threshold
        return summarised(self.scores(masks, np.asarray(logits, np.float32), **kwargs))

    def score_keys(self):
        """`{class name: score-key suffix}` of the foreground classes (`dice_<suffix>` in the
        scores); None for the binary task's one class, whose numbers are the overall ones."""
        from keras_litenext.metrics import class_names_for

        if self.output_channels == 1:
            return {self.foreground_names[0]: None}
        return dict(zip(self.foreground_names, class_names_for(self.num_classes, self.class_names)[1:]))

    def report_summary(self, result):
        """The export report's view of `test_scores`: mean/std per metric and per class, per-image Dice."""
        from keras_litenext.export.scoring import segmentation_summary

        return segmentation_summary(result, self.score_keys())

    def file_headline(self, test):
        return f"test Dice {test['dice']['mean']:.4f}"

    def evaluation_text(self, images):
        return (f"test split ({images} images), per-image Dice/IoU/HD95"
                + (" (mean over the foreground classes present, and per class)" if self.output_channels > 1 else ""))

    def file_description(self, file_test, float_test):
        from keras_litenext.export.contract import segmentation_description

        return segmentation_description(self, file_test, float_test)

    def export_gate(self, report, options):
        """The Dice gate (`export.gate.dice_gate`: `options.max_dice_drop`, `max_class_drop`)."""
        from keras_litenext.export.gate import dice_gate

        return dice_gate(report, options.max_dice_drop, options.max_class_drop, task=self)

    chance_dice = 0.05  # a float model below this mean test Dice scores at chance: the gate verifies nothing

    def at_chance(self, float_test):
        """Why the float model's test scores (the report's `keras_float.test`) are at chance, so
        that an int8 file matching it proves nothing, or None: no test image with foreground, or
        mean foreground Dice below `chance_dice`."""
        from keras_litenext.export.scoring import number

        dice = number((float_test.get("dice") or {}).get("mean"))
        if dice is None or not float_test.get("counted", 1):
            return "no test image has foreground, so the float model's Dice measures nothing"
        if dice < self.chance_dice:
            return f"the float model scores at chance (Dice {100 * dice:.2f}, below the floor of {100 * self.chance_dice:.2f})"
        return None

    def report_markdown(self, report):
        from keras_litenext.export.report import segmentation_markdown

        return segmentation_markdown(report)
