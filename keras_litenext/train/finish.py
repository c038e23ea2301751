"""The end of a run: its test-split scores (`metrics.json`), `model_card.md`, `curves.png` and
the task's pictures and tables."""

import os

import numpy as np

from keras_litenext.data.intensity import to_float
from keras_litenext.runs import HISTORY, METRICS_FILE, MODEL_CARD, Run
from keras_litenext.utils import write_text
from keras_litenext.visualize import plot_history

__all__ = ["finish_run", "model_card"]


def finish_run(config, model, arrays, train_seconds=None, spacing=None):
    """Evaluate `model` on the test split; write `metrics.json`, `model_card.md`, `curves.png` and
    the task's pictures and tables (`task.write_test_artifacts`: segmentation `test_overlays.png`;
    classification `confusion_matrix.png`, `test_predictions.csv`). With `spacing` (one pixel
    size per test image) HD95 is in those units (mm) and the per-image areas and ASSD are added."""
    run = Run(config.output, config)
    task = run.task
    test_images, test_targets = arrays["test"]
    logits = np.asarray(model.predict(to_float(test_images), batch_size=config.batch_size, verbose=0))
    results = task.test_results(test_targets, logits, spacing=spacing)
    summary = {
        "model": config.model,
        "params": int(model.count_params()),
        "data": os.path.abspath(config.data),
        "image_size": config.image_size,
        "task": task.name,
        "class_names": list(task.class_names),
        "split": "test",
        "train_seconds": None if train_seconds is None else round(train_seconds, 1),
        **results,
    }
    run.write_json(METRICS_FILE, summary)
    write_text(run.file(MODEL_CARD), model_card(config, model, summary, task.summary_line(results)))
    if run.exists(HISTORY):
        plot_history(run.file(HISTORY), run.file("curves.png"))
    task.write_test_artifacts(run, test_images, test_targets, logits, results)
    print(f"Test {task.summary_line(results)} ({task.test_count(results)}) -> {config.output}")
    return summary


def model_card(config, model, summary, result_line):
    """`model_card.md` of a run: what the model is (its spec, the paper, what a user must know),
    what it was trained on and how, and its test scores."""
    from keras_litenext.models import registry

    try:
        spec = registry.spec_of(model)
    except ValueError:
        spec = None
    splits = Run(config.output, config).split_sizes() or {}
    lines = [f"# Model card: {config.model}", ""]
    if spec is not None:
        lines += [spec.description, "", f"Paper: {spec.reference}.", ""]
        if spec.notes:
            lines += [spec.notes, ""]
    if config.serp:
        lines += ["Trained with SeRP, a reconstruction of the LiteNeXt paper's self-embedding training "
                  "(`keras_litenext.serp`): the paper gives no code for it.", ""]
    lines += [
        f"- Parameters: {summary['params']:,}",
        f"- Task: {summary['task']}, classes {', '.join(summary['class_names'])}",
        f"- Data: `{os.path.basename(os.path.normpath(config.data))}` at {config.image_size}x{config.image_size}, "
        f"{config.channels} channel(s); split {', '.join(f'{k} {n}' for k, n in splits.items()) or '-'} (seed {config.seed})",
        f"- Training: {config.epochs} epochs, batch {config.batch_size}, loss {config.loss}, lr {config.lr}, "
        f"{'augmented' if config.augment else 'no augmentation'}",
        f"- Test split: {result_line}",
        "",
        "Files: `best.keras` (the model), `config.json` (every setting), `metrics.json` (the scores, per image).",
        "",
    ]
    return "\n".join(lines)
