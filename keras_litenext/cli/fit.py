"""Train a segmentation model on a folder of images and masks, or an image classifier on a
folder of class sub-folders.

With no arguments, trains LiteNeXt on the 96x96 nuclei sample bundled with the package (300
pairs of the CC0 2018 Data Science Bowl set) and prints the test Dice: a few minutes on a laptop
CPU. For your own data, point --data at a folder with images/ and masks/ (paired by file name):

    python training/fit.py --data path/to/dataset --image-size 256 --epochs 100
    python training/fit.py --data kvasir --masks-suffix _mask --mask-threshold 127 --skip-bad
    python training/fit.py --data bbbc039_3class --image-size 256   # classes from classes.json
    python training/fit.py --data my_data --num-classes 4 --palette colours.json
    python training/fit.py --output runs/mine --resume          # continue a killed run

Image classification: --data is a folder with one sub-folder per class (optionally inside
train/, val/, test/, then used as the split; else a seeded stratified split), and --model a
classifier (NAME or NAME-SIZE, e.g. mednext-cls-s; the task is then classification):

    python training/fit.py --model mednext-cls-s --data pneumoniamnist --channels 1

(PneumoniaMNIST: {train,val,test}/{normal,pneumonia}/*.png, 28x28 grey, trained at 64x64 by
default with a stride-32 model; MedMNIST v2, Yang et al., Scientific Data 10, 41, 2023,
CC BY 4.0.) Classification runs pick the best validation AUC and write metrics.json (accuracy,
balanced accuracy, macro AUC, per-class recall, confusion matrix), confusion_matrix.png and
test_predictions.csv.

DICOM and NIfTI data (pip install "keras-litenext[medical]"): images/ and masks/ hold .dcm or
.nii/.nii.gz files (masks may be PNGs for single-frame DICOMs); volumes train on their 2-D slices,
split by volume. --intensity chooses how the stored values become the network's input:

    python training/fit.py --data ct_nifti --channels 1 --intensity window:-1000,400 --empty-slices 0.2

Several processes, on one host or several (JAX: KERAS_BACKEND=jax), train one run together;
start the same command on each, with its own --process-id (process 0 writes the run folder):

    KERAS_BACKEND=jax python training/fit.py --data DATA --output runs/r \\
        --coordinator-address 10.0.0.1:12355 --num-processes 2 --process-id 0

Everything a run writes goes into one folder (--output): best.keras (best validation Dice;
classification: best validation AUC), history.csv, TensorBoard logs/, curves.png, metrics.json
(test split), test_overlays.png (classification: confusion_matrix.png, test_predictions.csv),
splits.json and config.json.
"""

import argparse
import shlex
import sys

from keras_litenext.cli import args as cli
from keras_litenext.data import DatasetError
from keras_litenext.losses import LOSSES, MULTICLASS_LOSSES, MWL_WEIGHTS
from keras_litenext.models import get_spec, list_models
from keras_litenext.models.registry import resolve_model_name
from keras_litenext.runs import SETTING_TYPES as T
from keras_litenext.runs import RunError, TrainConfig
from keras_litenext.train import NonFiniteLossError, train
from keras_litenext.train.distributed import GroupError, join, launch_from

LAUNCH = ("coordinator_address", "num_processes", "process_id")  # where the process stands, not settings of the run


def model_name(text):
    """`--model`: a registry name, or NAME-SIZE for a family with sizes (kept as typed; training
    resolves it)."""
    try:
        resolve_model_name(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def intensity_recipe(text):
    """`--intensity`: a recipe in its command-line form (`intensity.Intensity.parse`), as its `Intensity`."""
    from keras_litenext.data.intensity import Intensity

    try:
        return Intensity.parse(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err).replace(f"--intensity {text!r}: ", "")) from None


def build_parser():
    """The `fit` command line: one flag per `TrainConfig` setting, checked as `TrainConfig.validate` checks it."""
    d = TrainConfig()
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--data", type=cli.existing_dir, help="dataset folder with images/ and masks/, or with one sub-folder per class (classification; "
                   "default: the bundled nuclei sample)")
    g.add_argument("--image-size", type=T["image_size"], help="train at this square size, a multiple of the model's output stride ("
                   + ", ".join(f"{n}: {get_spec(n).size_multiple}" for n in list_models()) + "; default: 96 for the sample, "
                   "256 for segmentation; classification: the data's size rounded up to the stride, at least 2 strides, at most 256)")
    g.add_argument("--channels", type=int, default=d.channels, choices=(1, 3), help="1 = grey, 3 = RGB (default: %(default)s)")
    g.add_argument("--masks-suffix", type=T["masks_suffix"], default=d.masks_suffix, help="mask file = image stem + this suffix, e.g. _segmentation")
    g.add_argument("--mask-threshold", type=T["mask_threshold"], default=d.mask_threshold, help="mask pixels above this are foreground (default: %(default)s; use 127 for JPEG masks)")
    g.add_argument("--num-classes", type=T["num_classes"], help="classes including the background, masks hold 0..K-1 (default: from classes.json beside the data, else 2 = binary)")
    g.add_argument("--task", choices=("binary", "multiclass", "classification"),
                   help="default: classification for a classifier model (K logits per image, softmax), else binary for 2 classes "
                   "(1 logit per pixel, sigmoid), multiclass for more (K logits per pixel, softmax)")
    g.add_argument("--palette", type=cli.existing_file, help='colour masks: JSON file mapping each colour to a class, e.g. {"255,0,0": 1, "#00ff00": 2}')
    g.add_argument("--splits", type=cli.existing_file, help="JSON file with train/val/test lists of file stems (default: a seeded split)")
    g.add_argument("--split", type=T["split"], default=d.split, help="train,val,test fractions (default: 0.8,0.1,0.1)")
    g.add_argument("--skip-bad", action="store_true", help="skip unreadable or unpaired files with a warning instead of stopping")
    g.add_argument("--intensity", type=intensity_recipe, metavar="RECIPE",
                   help="how stored values become the input in [0, 1]: uint8 (p / 255), window:LOW,HIGH (e.g. window:-1000,400 "
                   "for CT in HU), window (each DICOM's own centre/width), percentile[:LOW,HIGH] (per image, default 0.5,99.5), "
                   "zscore[:CLIP] (per image, +-3 SD); default: uint8, percentile for DICOM/NIfTI data")
    g.add_argument("--slice-axis", type=T["slice_axis"], default=d.slice_axis, help="NIfTI volumes: train on the slices along this voxel axis (default: %(default)s)")
    g.add_argument("--empty-slices", type=T["empty_slices"], default=d.empty_slices,
                   help="DICOM/NIfTI volumes: fraction of the slices with an empty label to keep, evenly spaced (default: %(default)s = all)")
    g.add_argument("--nonfinite", default=d.nonfinite, choices=("minimum", "error"),
                   help="DICOM/NIfTI images: NaN/inf become the volume's lowest finite value, with a note (minimum, the default), "
                   "or the file is refused (error); labels with NaN are always refused")
    g.add_argument("--no-augment", dest="augment", action="store_false", help="turn off flips, rotation, zoom, brightness/contrast and blur")
    g = p.add_argument_group("model and loss")
    g.add_argument("--model", default=d.model, type=model_name, metavar="NAME",
                   help="one of " + ", ".join(list_models()) + "; a family with sizes also takes NAME-SIZE (default: %(default)s)")
    g.add_argument("--loss", default=d.loss, choices=sorted(set(LOSSES) | set(MULTICLASS_LOSSES)),
                   help="mwl = Marginal Weight Loss (weighted cross-entropy + Dice), the default; binary: %s; multiclass: %s; "
                   "classification: ce (softmax cross-entropy, its default)" % (", ".join(LOSSES), ", ".join(MULTICLASS_LOSSES)))
    g.add_argument("--mwl-weights", type=T["mwl_weights"], default=d.mwl_weights, metavar="M,O,B", help="MWL weights of margin, object, background (default: %s)" % ",".join(f"{w:g}" for w in MWL_WEIGHTS))
    g.add_argument("--class-weights", type=T["class_weights"], default=d.class_weights, metavar="W0,W1,...", help="multiclass / classification: cross-entropy weight of each class")
    g.add_argument("--label-smoothing", type=T["label_smoothing"], default=d.label_smoothing, help="classification: cross-entropy label smoothing (default: %(default)s)")
    g.add_argument("--mwl-kernel", type=T["mwl_kernel"], default=d.mwl_kernel, help="MWL margin kernel size (default: %(default)s)")
    g.add_argument("--serp", action="store_true", help="add Self-embedding Representation Parallel training (a reconstruction; training only)")
    g.add_argument("--serp-weight", type=T["serp_weight"], default=d.serp_weight, help="weight of the SeRP loss (default: %(default)s)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=T["epochs"], help="(default: 40 for the bundled sample, else 60)")
    g.add_argument("--batch-size", type=T["batch_size"], default=d.batch_size, help="(default: %(default)s)")
    g.add_argument("--lr", type=T["lr"], default=d.lr, help="AdamW learning rate (default: %(default)s)")
    g.add_argument("--weight-decay", type=T["weight_decay"], default=d.weight_decay, help="(default: %(default)s)")
    g.add_argument("--schedule", default=d.schedule, choices=("cosine", "plateau"), help="learning-rate schedule (default: %(default)s)")
    g.add_argument("--seed", type=T["seed"], default=d.seed, help="seeds the split, augmentation and initialisation (default: %(default)s)")
    g.add_argument("--mixed-precision", default=d.mixed_precision, choices=("auto", "on", "off"), help="float16 compute; auto = on a GPU")
    g.add_argument("--jit-compile", default=d.jit_compile, choices=("auto", "on", "off"), help="XLA; auto = on a GPU, and always under the JAX backend")
    g = p.add_argument_group("run")
    g.add_argument("--output", type=cli.output_path, help="run folder (default: runs/<model>-<data>-<time>)")
    g.add_argument("--resume", action="store_true", help="continue the run in --output from its last finished epoch; "
                   "--epochs, --lr, --weight-decay, --mixed-precision and --jit-compile may change, other settings must "
                   "match the run's config.json")
    g.add_argument("--config", type=cli.existing_file, help="JSON file of settings (keys as the flags, with underscores); flags given override it")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    g.add_argument("--verbose", action="store_true", help="also show TensorFlow's own start-up and C++ log lines")
    g = p.add_argument_group("several processes or hosts (JAX; also the KERAS_DISTRIBUTION_* variables)")
    g.add_argument("--coordinator-address", type=cli.host_port, metavar="HOST:PORT", help="process 0's address, the same on every process")
    g.add_argument("--num-processes", type=cli.positive_int, metavar="N", help="processes in the group; --batch-size is their global batch")
    g.add_argument("--process-id", type=cli.nonnegative_int, metavar="I", help="this process, 0 to N-1; process 0 writes the run folder")
    return p


def main(argv=None):
    """Run `keras-litenext fit`; returns the exit status (0, 1 for an error, 130 when interrupted).

    The flags given, over the `--config` file's settings (`TrainConfig.read`), make one
    `TrainConfig`; `train` checks it once and, with `--resume`, merges it with the run's own."""
    p = build_parser()
    args = p.parse_args(argv)
    group = None
    try:
        config = TrainConfig.read(args.config, flag="--config") if args.config else TrainConfig()
        config = config.merged({k: v for k, v in vars(args).items()
                                if k not in ("config", "quiet", "verbose", *LAUNCH) and v != p.get_default(k)})
        if "verbose" not in config.stated:
            config.verbose = 2 if args.quiet else "auto"
        group = join(launch_from(args.coordinator_address, args.num_processes, args.process_id), quiet=not args.verbose)
        summary = train(config, given=config.stated - {"verbose"}, group=group)
    except GroupError as err:
        return _ended(group, f"error: {err}", 1)
    except (DatasetError, NonFiniteLossError, RunError, OSError, ValueError, TypeError) as err:
        return _ended(group, f"error: {err}", 1)
    except KeyboardInterrupt:
        return _ended(group, "interrupted: the run folder keeps its last finished epoch; continue it with --output RUN --resume", 130)
    except Exception as err:
        if group is None:
            raise
        text = str(err).strip().splitlines()
        return _ended(group, f"error: {type(err).__name__}: {text[0] if text else ''}", 1)  # the others see a collective fail
    if group is not None and not group.is_chief:
        return 0
    run = (summary or {}).get("output") or config.output
    if run:
        q = shlex.quote(str(run))
        print(f"The run is in {run} (best.keras, metrics.json, model_card.md). Next: keras-litenext evaluate {q}, "
              f"or keras-litenext export {q} for the phone files.")
    return 0


def _ended(group, line, code):
    """Say why the command ended; a process of a group also ends at once (`Group.stop`): its peers
    cannot finish a collective with it, and the runtime's own exit would wait for them."""
    if group is None:
        print(line, file=sys.stderr)
        return code
    group.stop(line, code)
