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

Everything a run writes goes into one folder (--output): best.keras (best validation Dice;
classification: best validation AUC), history.csv, TensorBoard logs/, curves.png, metrics.json
(test split), test_overlays.png (classification: confusion_matrix.png, test_predictions.csv),
splits.json and config.json.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter out of the output

import argparse
import json
import sys

from keras_litenext.data import DatasetError
from keras_litenext.losses import LOSSES, MULTICLASS_LOSSES, MWL_WEIGHTS
from keras_litenext.models import get_spec, list_models
from keras_litenext.models.registry import resolve_model_name
from keras_litenext.training import NonFiniteLossError, TrainConfig, train


def floats(text):
    return tuple(float(v) for v in text.split(","))


def model_name(text):
    """`--model`: a registry name, or NAME-SIZE for a family with sizes (kept as typed; training
    resolves it)."""
    try:
        resolve_model_name(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def parser():
    d = TrainConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--data", help="dataset folder with images/ and masks/, or with one sub-folder per class (classification; "
                   "default: the bundled nuclei sample)")
    g.add_argument("--image-size", type=int, help="train at this square size, a multiple of the model's output stride ("
                   + ", ".join(f"{n}: {get_spec(n).size_multiple}" for n in list_models()) + "; default: 96 for the sample, "
                   "256 for segmentation; classification: the data's size rounded up to the stride, at least 2 strides, at most 256)")
    g.add_argument("--channels", type=int, default=d.channels, choices=(1, 3), help="1 = grey, 3 = RGB (default: %(default)s)")
    g.add_argument("--masks-suffix", default=d.masks_suffix, help="mask file = image stem + this suffix, e.g. _segmentation")
    g.add_argument("--mask-threshold", type=int, default=d.mask_threshold, help="mask pixels above this are foreground (default: %(default)s; use 127 for JPEG masks)")
    g.add_argument("--num-classes", type=int, help="classes including the background, masks hold 0..K-1 (default: from classes.json beside the data, else 2 = binary)")
    g.add_argument("--task", choices=("binary", "multiclass", "classification"),
                   help="default: classification for a classifier model (K logits per image, softmax), else binary for 2 classes "
                   "(1 logit per pixel, sigmoid), multiclass for more (K logits per pixel, softmax)")
    g.add_argument("--palette", help='colour masks: JSON file mapping each colour to a class, e.g. {"255,0,0": 1, "#00ff00": 2}')
    g.add_argument("--splits", help="JSON file with train/val/test lists of file stems (default: a seeded split)")
    g.add_argument("--split", type=floats, default=d.split, help="train,val,test fractions (default: 0.8,0.1,0.1)")
    g.add_argument("--skip-bad", action="store_true", help="skip unreadable or unpaired files with a warning instead of stopping")
    g.add_argument("--no-augment", dest="augment", action="store_false", help="turn off flips, rotation, zoom, brightness/contrast and blur")
    g = p.add_argument_group("model and loss")
    g.add_argument("--model", default=d.model, type=model_name, metavar="NAME",
                   help="one of " + ", ".join(list_models()) + "; a family with sizes also takes NAME-SIZE (default: %(default)s)")
    g.add_argument("--loss", default=d.loss, choices=sorted(set(LOSSES) | set(MULTICLASS_LOSSES)),
                   help="mwl = Marginal Weight Loss (weighted cross-entropy + Dice), the default; binary: %s; multiclass: %s; "
                   "classification: ce (softmax cross-entropy, its default)" % (", ".join(LOSSES), ", ".join(MULTICLASS_LOSSES)))
    g.add_argument("--mwl-weights", type=floats, default=d.mwl_weights, metavar="M,O,B", help="MWL weights of margin, object, background (default: %s)" % ",".join(f"{w:g}" for w in MWL_WEIGHTS))
    g.add_argument("--class-weights", type=floats, default=d.class_weights, metavar="W0,W1,...", help="multiclass / classification: cross-entropy weight of each class")
    g.add_argument("--label-smoothing", type=float, default=d.label_smoothing, help="classification: cross-entropy label smoothing (default: %(default)s)")
    g.add_argument("--mwl-kernel", type=int, default=d.mwl_kernel, help="MWL margin kernel size (default: %(default)s)")
    g.add_argument("--serp", action="store_true", help="add Self-embedding Representation Parallel training (a reconstruction; training only)")
    g.add_argument("--serp-weight", type=float, default=d.serp_weight, help="weight of the SeRP loss (default: %(default)s)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, help="(default: 40 for the bundled sample, else 60)")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="(default: %(default)s)")
    g.add_argument("--lr", type=float, default=d.lr, help="AdamW learning rate (default: %(default)s)")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay, help="(default: %(default)s)")
    g.add_argument("--schedule", default=d.schedule, choices=("cosine", "plateau"), help="learning-rate schedule (default: %(default)s)")
    g.add_argument("--seed", type=int, default=d.seed, help="seeds the split, augmentation and initialisation (default: %(default)s)")
    g.add_argument("--mixed-precision", default=d.mixed_precision, choices=("auto", "on", "off"), help="float16 compute; auto = on a GPU")
    g.add_argument("--jit-compile", default=d.jit_compile, choices=("auto", "on", "off"), help="XLA; auto = on a GPU")
    g = p.add_argument_group("run")
    g.add_argument("--output", help="run folder (default: runs/<model>-<data>-<time>)")
    g.add_argument("--resume", action="store_true", help="continue the run in --output from its last finished epoch")
    g.add_argument("--config", help="JSON file of settings (keys as the flags, with underscores); flags given override it")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv=None):
    p = parser()
    args = p.parse_args(argv)
    values = {}
    if args.config:
        with open(args.config) as f:
            values.update(json.load(f))
    explicit = {k: v for k, v in vars(args).items() if k not in ("config", "quiet") and v != p.get_default(k)}
    values.update(explicit)
    values.setdefault("verbose", 2 if args.quiet else "auto")
    try:
        train(TrainConfig.from_dict(values))
    except (DatasetError, NonFiniteLossError, FileExistsError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
