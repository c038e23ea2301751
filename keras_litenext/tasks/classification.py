"""The image classification task: K logits per image, softmax."""

import os

import numpy as np

from keras_litenext.tasks.base import Task, _fmt, register_task, softmax


@register_task
class ClassificationTask(Task):
    """Image classification: K logits per image `(batch, K)`, softmax, the arg-max is the class.

    K = 2 is served the same way (two logits, softmax), not by one sigmoid logit: the output,
    the loss and the export contract are then the same for every K.

    - Loss: softmax cross-entropy of the logits against the class index
      (`losses.ClassificationCrossEntropy`, name `"ce"`), with optional class weights and label
      smoothing.
    - Metrics while training: `accuracy` and `auc`, the streaming macro one-vs-rest ROC AUC
      (`metrics.MacroAUC`).
    - Monitored: `val_auc` (max). AUC rather than accuracy because it is threshold-free and does
      not reward predicting the majority class (on PneumoniaMNIST, 74 % of the test images are
      pneumonia: a constant answer has 0.74 accuracy but AUC 0.5), and it moves smoothly where
      accuracy moves in steps of 1 / (validation images), so `best.keras` is less the luck of
      one epoch.
    - Test split (`scores`): accuracy, balanced accuracy, macro AUC (exact, rank-based), per-class
      AUC / recall / precision, the confusion matrix.
    """

    name = "classification"
    kind = "classification"
    activation = "softmax"
    monitor = "val_auc"
    default_loss = "ce"
    LOSSES = ("ce",)

    @property
    def output_channels(self):
        """Logits per image (one per class)."""
        return self.num_classes

    @property
    def foreground_names(self):
        """Every class (there is no background)."""
        return self.class_names

    # -- training -----------------------------------------------------------------------------
    def loss(self, name=None, class_weights=None, label_smoothing=0.0, **_segmentation_settings):
        """Softmax cross-entropy (`"ce"`, the only one; `"cross_entropy"` is accepted too)."""
        from keras_litenext.losses import ClassificationCrossEntropy

        key = (name or self.default_loss).strip().lower().replace("-", "_")
        if key not in ("ce", "cross_entropy"):
            raise ValueError(f"Loss {name!r} is a segmentation loss; the classification task trains with: {', '.join(self.LOSSES)}.")
        weights = None if class_weights is None else [float(w) for w in class_weights]
        return ClassificationCrossEntropy(self.num_classes, class_weights=weights, label_smoothing=float(label_smoothing or 0.0))

    def metrics(self):
        """`accuracy` and `auc` (monitored as `val_auc`)."""
        from keras_litenext.metrics import classification_metrics

        return classification_metrics(self.num_classes)

    # -- decoding predictions -----------------------------------------------------------------
    def probabilities(self, logits):
        """Softmax over the last axis."""
        return softmax(logits)

    def labels(self, logits):
        """`(N,)` int arg-max of logits `(N, K)`."""
        return np.argmax(np.asarray(logits), axis=-1).astype(np.int64)

    labels_from_probabilities = labels

    # -- evaluation and prediction
    any_size = False  # every image is resized to the training size, as in training
    writes_label_files = False  # a prediction is a row of `prediction_csv` only
    prediction_csv = "predictions.csv"  # a prediction is one row per image: file, predicted, a probability per class
    prediction_key = "file"  # the rows' first column: the path relative to the folder predicted

    def prediction_fields(self):
        """`[(column, type)]` of a per-image prediction row after its key (`inference.rows`): the
        arg-max class, then one probability (softmax) per class name."""
        return [("predicted", str)] + [(str(n), float) for n in self.class_names]

    def prediction_values(self, probabilities, spacing=None, model_sha256=None):
        """The values of `prediction_fields` for one image's class probabilities `(K,)` (a pixel
        size and the model's digest mean nothing to this row: the CSV keeps its columns)."""
        p = np.asarray(probabilities, np.float64).reshape(-1)
        return {"predicted": self.class_names[int(p.argmax())], **{str(n): float(v) for n, v in zip(self.class_names, p)}}

    def evaluation_lines(self, results):
        """What an evaluation reports: accuracy, balanced accuracy, macro AUC, the recall per class,
        the confusion matrix and the image count."""
        lines = [f"{'accuracy':>18}: {results['accuracy']:.4f}",
                 f"{'balanced accuracy':>18}: {results['balanced_accuracy']:.4f}",
                 f"{'macro AUC':>18}: {results['auc']:.4f}"]
        for name, value in results["recall_per_class"].items():
            lines.append(f"{'recall ' + name:>18}: {'-' if value is None else f'{value:.4f}'}")
        lines.append(f"confusion matrix (rows true, columns predicted; {', '.join(self.class_names)}): {results['confusion_matrix']}")
        lines.append(f"{results['images']} images")
        return lines

    def scores(self, labels, logits, from_logits=True, **_ignored):
        """Test-split scores (`metrics.classification_scores`) of true class indices `(N,)` and
        logits `(N, K)` (probabilities with `from_logits=False`)."""
        from keras_litenext.metrics import classification_scores

        logits = np.asarray(logits, np.float32)
        if logits.ndim != 2 or logits.shape[-1] != self.num_classes:
            raise ValueError(f"Expected classifier logits of shape (N, {self.num_classes}), got {logits.shape}.")
        probabilities = self.probabilities(logits) if from_logits else logits
        return classification_scores(np.asarray(labels).reshape(-1), probabilities, self.class_names)

    def summary_line(self, scores):
        """One human line of `scores`."""
        recall = ", ".join(f"{n} {_fmt(v)}" for n, v in scores["recall_per_class"].items())
        return (f"accuracy {_fmt(scores['accuracy'])}, balanced accuracy {_fmt(scores['balanced_accuracy'])}, "
                f"AUC {_fmt(scores['auc'])} (recall: {recall})")

    # -- training and run folder
    item_word = "images"
    uses_masks = False  # one sub-folder per class
    uses_intensity = False
    loss_settings = ("class_weights", "label_smoothing")

    @classmethod
    def resolve_settings(cls, config):
        """Fill a run's class names from the class folders of its data (sorted), unless given (then a
        permutation of them), and check the settings that have no meaning here; returns the task."""
        from keras_litenext.data.folders import read_class_names

        if config.palette:
            raise ValueError("--palette maps mask colours to classes; it has no meaning for image classification.")
        if config.serp:
            raise ValueError("--serp (a reconstruction of the segmentation encoder) is for segmentation runs, not classification.")
        if config.data is not None and os.path.isdir(config.data):
            folders = list(read_class_names(config.data))
            if config.class_names is None:
                config.class_names = folders
            elif sorted(str(n) for n in config.class_names) != sorted(folders):
                raise ValueError(f"class_names {list(config.class_names)} are not the class folders of {config.data} ({', '.join(folders)}).")
        if config.class_names is not None:
            config.class_names = [str(n) for n in config.class_names]
            if config.num_classes is not None and int(config.num_classes) != len(config.class_names):
                raise ValueError(f"--num-classes {config.num_classes} but {len(config.class_names)} classes: {', '.join(config.class_names)}.")
        task = config.task_spec
        config.num_classes, config.class_names = task.num_classes, list(task.class_names)
        return task

    def file_settings(self, model, settings):
        """Settings a bare `.keras` classifier implies (`runs.file_run`): the task and the model's
        registry name (the classes come from the data's folders)."""
        from keras_litenext.models import registry

        if settings.get("task", self.name) != self.name:
            return {}
        try:
            name = registry.spec_of(model).name
        except ValueError:
            name = model.name
        return {"task": self.name, "model": name}

    def default_image_size(self, data, size_multiple):
        """The data's size rounded up to the model's stride, at least 2 strides, at most 256."""
        from keras_litenext.data.folders import default_image_size, probe_size

        return default_image_size(max(probe_size(data)), size_multiple)

    def split(self, stems, labels, fractions, seed):
        """A seeded split stratified by class, or the dataset's own train/val/test folders."""
        from keras_litenext.data.folders import split_images

        return split_images(stems, labels, fractions=fractions, seed=seed)

    def augmenter(self, seed=None, **options):
        """Flips and small rotations of the image only; `options` (`data.augmenter` keyword
        arguments) change those settings."""
        from keras_litenext.data.augment import augmenter
        from keras_litenext.data.folders import classification_augmenter

        base = classification_augmenter(seed=seed)
        return augmenter(**{**base.config, **options}) if options else base

    def dataset(self, images, labels, batch_size, augment=None, shuffle=False, seed=None, drop_remainder=False):
        """A `tf.data` pipeline of `(image, label)` batches."""
        from keras_litenext.data.folders import make_classification_dataset

        return make_classification_dataset(images, labels, batch_size, augment=augment, shuffle=shuffle, seed=seed,
                                           drop_remainder=drop_remainder)

    def warn_about_targets(self, arrays, data):
        """Nothing to warn about: every image has its class."""

    def data_line(self, report):
        """What the training's `Data:` line says of the classes, the split and ignored files."""
        line = "; classification: " + ", ".join(f"{n} {c}" for n, c in report["per_class"].items())
        line += f"; {'split folders ' + '/'.join(report['splits']) if report['splits'] else 'stratified split'}"
        return line + (f"; {report['ignored']} non-image files ignored" if report.get("ignored") else "")

    def test_results(self, labels, logits, spacing=None):
        """The test-split part of `metrics.json`: `scores` (a pixel size has no meaning here)."""
        return self.scores(labels, logits)

    def test_count(self, results):
        return f"{results['images']} test images"

    def write_test_artifacts(self, run, images, labels, logits, results):
        """`confusion_matrix.png` and `test_predictions.csv` (class probabilities of every test image)."""
        from keras_litenext.data.folders import write_predictions_csv
        from keras_litenext.visualize import plot_confusion_matrix

        plot_confusion_matrix(results["confusion_matrix"], self.class_names, run.file("confusion_matrix.png"),
                              title=f"test split ({results['images']} images), accuracy {results['accuracy']:.3f}")
        stems = (run.splits() or {}).get("test")
        if stems is None or len(stems) != len(labels):
            stems = [str(i) for i in range(len(labels))]
        write_predictions_csv(run.file("test_predictions.csv"), stems, self.probabilities(logits), self.class_names, true_labels=labels)

    def contract(self):
        return {
            "task": self.name,
            "classes": {str(i): n for i, n in enumerate(self.class_names)},
            "output_meaning": f"{self.num_classes} logits per image, one per class, shape (1, {self.num_classes})",
            "decoding": "class = arg-max over the last axis (softmax gives the class probabilities)",
            "activation": "none (logits); apply softmax over the last axis",
        }

    # -- export
    mediapipe_task = "ImageClassifier"
    metadata_kind = "classification"

    @property
    def output_wording(self):
        return f"{self.num_classes} logits, arg-max = class"

    def monitor_score(self, labels, logits):
        """The macro AUC of logits: what QAT ranks its candidates by."""
        return float(self.scores(labels, logits)["auc"])

    def test_scores(self, labels, logits, **_segmentation_options):
        """`scores` of logits (accuracy, balanced accuracy, AUC, per class, confusion matrix)."""
        return self.scores(labels, np.asarray(logits, np.float32))

    def report_summary(self, result):
        """The export report's view of `test_scores`: the scores as they are."""
        return dict(result)

    def file_headline(self, test):
        return f"test accuracy {test['accuracy']:.4f}, AUC {_fmt(test['auc'])}"

    def evaluation_text(self, images):
        return f"test split ({images} images), accuracy, balanced accuracy and macro one-vs-rest ROC AUC"

    def output_contract(self, out):
        """The contract's output section (`export.contract.classification_output`)."""
        from keras_litenext.export.contract import classification_output

        return classification_output(self, out)

    def file_description(self, file_test, float_test):
        from keras_litenext.export.contract import classification_description

        return classification_description(self, file_test, float_test)

    def export_gate(self, report, options):
        """The accuracy and AUC gate (`export.gate.accuracy_gate`: `options.max_accuracy_drop`, `max_auc_drop`)."""
        from keras_litenext.export.gate import accuracy_gate

        return accuracy_gate(report, options.max_accuracy_drop, options.max_auc_drop, task=self)

    chance_auc = 0.55  # a float model's macro AUC at most this ranks at chance: the gate verifies nothing

    def at_chance(self, float_test):
        """Why the float model's test scores (the report's `keras_float.test`) are at chance, or
        None: macro AUC at most `chance_auc`, or accuracy no better than always answering the
        majority class of the test split."""
        from keras_litenext.export.scoring import number

        auc, accuracy = number(float_test.get("auc")), number(float_test.get("accuracy"))
        if auc is not None and auc <= self.chance_auc:
            return f"the float model scores at chance (AUC {auc:.4f}, at most {self.chance_auc:g})"
        matrix = np.asarray(float_test.get("confusion_matrix") or [], np.float64)
        if accuracy is not None and matrix.ndim == 2 and matrix.sum() > 0:
            majority = matrix.sum(axis=1).max() / matrix.sum()
            if accuracy <= majority + 1e-9:
                return (f"the float model scores at chance (accuracy {100 * accuracy:.2f}, no better than always answering "
                        f"the majority class: {100 * majority:.2f})")
        if accuracy is None:
            return "the float model's test accuracy is undefined (an empty test split?)"
        return None

    def report_markdown(self, report):
        from keras_litenext.export.report import classification_markdown

        return classification_markdown(report)
