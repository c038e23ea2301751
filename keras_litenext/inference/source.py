"""What to predict with: a trained run or model file, and its task."""

from keras_litenext.runs import open_source
from keras_litenext.tasks import task_for_output, task_from_config


def load_run(path):
    """`(model, config_dict)` from a run folder (its `best.keras` and `config.json`) or a
    `.keras` file (config `{}`).

    Raises:
        FileNotFoundError, ValueError: naming the path, for a missing or unreadable model.
    """
    model, run = open_source(path)
    return model, ({} if run is None else run.config.to_dict())


def task_of(model, config=None):
    """The task of a run's settings, or (a bare `.keras` file) the one its output implies
    (`tasks.task_for_output`: generic class names)."""
    if config:
        return task_from_config(config)
    return task_for_output(model.output_shape)
