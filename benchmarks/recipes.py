"""The default recipe against the authors' recipe, per model family and dataset, over seeds.

    python benchmarks/recipes.py --families litenext,ulite,lvunet \\
        --data data/dsb2018_96,data/bbbc039 --seeds 3 --image-size 64 --epochs 10 --json out.json
    python benchmarks/recipes.py ... --write docs/recipes.md     # also replace the section between this script's markers

For each dataset (`--data`: folders of `images/` and `masks/`), one train/val/test split
(80/10/10, `--split-seed`) is drawn once and written to `<runs>/splits/`; every run of that dataset,
whatever its family, recipe or seed, trains on it (`TrainConfig.splits`), so the seed moves the
initialisation, the augmentation draws and the batch order only. For each family, each seed
(`--first-seed`, `--first-seed + 1`, ...) and each recipe, one run: `train(TrainConfig(...))`
in its own Python process (memory is given back, a crash ends one run), its test Dice read from
the run folder's `metrics.json`. Image sizes are rounded up to the family's size multiple
(`ModelSpec.size_multiple`; LV-UNet: 128), the same for both recipes.

The recipes (`recipe_settings`; sources and every deviation in docs/recipes.md):

- `default`: `TrainConfig`'s defaults: MWL loss (margin, object, background 5, 3, 2), AdamW
  lr 1e-3, weight decay 1e-2, cosine to lr/100, batch 8, flips, ±20° rotation, ±10% zoom,
  brightness/contrast and blur.
- `authors`: each family's authors' training code mapped onto `TrainConfig` settings. U-Lite
  (duong-db/U-Lite): soft Dice, Adam 2e-3, plateau schedule, flips and ±15° rotation. LV-UNet
  (juntaoJianggavin/LV-UNet): BCE + Dice, Adam 1e-3 with weight decay 1e-4, cosine to 1e-5,
  flips, ImageNet mean/std input (`--lvunet-backbone` adds the ImageNet trunk). LiteNeXt
  (tranngocduvnvp/LiteNeXt., which has no training script): its augmentation (±20° rotation,
  flips, blur) and MWL weights 2, 3, 5; what the repository does not state is the default recipe's.
  Not expressible, so done this project's way in both recipes: Adam's L2 weight decay (AdamW's
  decoupled one is used), RandomRotate90, a rotation applied with probability 0.5, vertical flips
  at p 0.1, the batch-pooled Dice of U-Lite and the 0.5 BCE weight of LV-UNet (1 here), the kept
  epoch by validation IoU.

Resuming: `--json` holds every finished run and is rewritten (atomically) after each one; a run
already in it is skipped, and a run folder a kill left behind continues from its last epoch. The
report gives, per dataset and family, the test Dice over seeds (mean ± sample std), the mean of the
runs' per-image std, and the paired difference default − authors over the common seeds (mean ±
standard error): "≥ authors − 1 SE" is yes when the mean difference is at least −SE, "above" when
it is more than +SE.
"""

import argparse
import copy
import datetime
import hashlib
import json
import math
import os
import subprocess
import sys
import time

import numpy as np

__keras_litenext_command__ = True  # run as a script: the package starts quietly (keras_litenext.cli.quiet_start)
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
START, END = "<!-- benchmarks/recipes.py: start -->", "<!-- benchmarks/recipes.py: end -->"
TITLE = "## Recipes: the default against the authors' (`benchmarks/recipes.py`)"
RECIPES = ("default", "authors")
SPLIT = (0.8, 0.1, 0.1)
_NO_PHOTOMETRY = {"scale": 0.0, "brightness": 0.0, "contrast": 0.0, "blur": 0.0}  # steps the authors' pipelines lack

# Each family's authors' recipe as `TrainConfig` settings; the rest are TrainConfig's defaults.
AUTHORS = {
    # duong-db/U-Lite train.py: Adam(lr 2e-3), ReduceLROnPlateau(max val Dice, factor 0.5, patience 10),
    # batch 8; metrics.py: DiceLoss = 1 - soft Dice (sigmoid, smooth 1e-3); dataset.py: h/v flips p 0.5, rotation ±15°
    "ulite": {"loss": "dice", "lr": 2e-3, "weight_decay": 0.0, "schedule": "plateau", "batch_size": 8,
              "augment": {**_NO_PHOTOMETRY, "rotation": 15, "flip": True}},
    # juntaoJianggavin/LV-UNet train.py: Adam(lr 1e-3, weight_decay 1e-4), CosineAnnealingLR(eta_min 1e-5),
    # RandomRotate90 + Flip, ImageNet Normalize; losses.py: BCEDiceLoss; README: batch 8
    "lvunet": {"loss": "bce_dice", "lr": 1e-3, "weight_decay": 1e-4, "schedule": "cosine", "batch_size": 8,
               "augment": {**_NO_PHOTOMETRY, "rotation": 0, "flip": True}},
    # tranngocduvnvp/LiteNeXt. Datasets/transform.py: Rotate(20, p 1), HorizontalFlip 0.5, GaussianBlur p 0.5,
    # VerticalFlip 0.1; mwl.py: weights margin 2, object 3, background 5, kernel 7 (losses.REFERENCE_MWL_WEIGHTS)
    "litenext": {"loss": "mwl", "mwl_weights": [2.0, 3.0, 5.0], "mwl_kernel": 7,
                 "augment": {**_NO_PHOTOMETRY, "rotation": 20, "flip": True, "blur": 0.5}},
}


def recipe_settings(family, recipe, lvunet_backbone="none"):
    """The `TrainConfig` settings of a recipe (`{}` for the default: TrainConfig's own). LV-UNet's
    authors' recipe normalises with ImageNet mean/std, or, with `lvunet_backbone` (`"imagenet"` or
    a weights file), starts its trunk from Keras' ImageNet weights with their input and padding."""
    if recipe == "default":
        return {}
    if recipe != "authors":
        raise ValueError(f"unknown recipe {recipe!r}; known: {', '.join(RECIPES)}")
    if family not in AUTHORS:
        raise ValueError(f"{family} has no authors' recipe here; families with one: {', '.join(AUTHORS)}")
    settings = copy.deepcopy(AUTHORS[family])
    if family == "lvunet":
        settings["model_kwargs"] = ({"preprocessing": "imagenet"} if lvunet_backbone in (None, "none")
                                    else {"backbone_weights": lvunet_backbone, "padding": "keras"})
    return settings


# -- statistics ---------------------------------------------------------------------------------
def summary(values):
    """`{"n", "mean", "std"}` of a list of scores: the sample std (n − 1; NaN for one value).
    Raises ValueError for no value or a non-finite one."""
    x = np.asarray(list(values), dtype=np.float64)
    if x.size == 0 or not np.all(np.isfinite(x)):
        raise ValueError(f"summary needs finite scores, got {x.tolist()}")
    return {"n": int(x.size), "mean": float(x.mean()), "std": float(x.std(ddof=1)) if x.size > 1 else math.nan}


def paired(default, authors):
    """The paired comparison of two recipes' scores by seed (`{seed: score}` each, the same seeds):
    `{"n", "mean", "se"}` of default − authors (se = sample std / sqrt(n); NaN for one pair),
    `"at_least"`: mean ≥ −se, `"above"`: mean > se (None without an se). Raises ValueError when
    the seeds differ."""
    if set(default) != set(authors):
        raise ValueError(f"paired: the seeds differ (default {sorted(default)}, authors {sorted(authors)})")
    s = summary(default[k] - authors[k] for k in sorted(default))
    se = s["std"] / math.sqrt(s["n"])
    known = not math.isnan(se)
    return {"n": s["n"], "mean": s["mean"], "se": se,
            "at_least": bool(s["mean"] >= -se) if known else None, "above": bool(s["mean"] > se) if known else None}


# -- the plan ------------------------------------------------------------------------------------
def parse_args(argv=None):
    from keras_litenext.runs.checks import nonnegative_int, positive_int

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", default=",".join(AUTHORS), help=f"comma-separated families (default {','.join(AUTHORS)})")
    p.add_argument("--data", required=True, help="comma-separated dataset folders (images/ and masks/)")
    p.add_argument("--seeds", type=positive_int, default=3, help="training seeds per recipe (default 3)")
    p.add_argument("--first-seed", type=nonnegative_int, default=0, help="the first training seed (default 0)")
    p.add_argument("--split-seed", type=nonnegative_int, default=42, help="seed of the one 80/10/10 split per dataset (default 42)")
    p.add_argument("--image-size", type=positive_int, default=256, help="training size, rounded up per family (default 256)")
    p.add_argument("--epochs", type=positive_int, default=60, help="epochs of every run, both recipes (default 60)")
    p.add_argument("--lvunet-backbone", default="none",
                   help="LV-UNet's authors' trunk: none (default; random), imagenet (Keras' file, downloaded once) or a weights file")
    p.add_argument("--json", default="recipes.json", help="finished runs, read to resume and rewritten after each run (default recipes.json)")
    p.add_argument("--runs", help="folder of the run folders and splits (default: the --json path without .json, plus _runs)")
    p.add_argument("--write", metavar="MARKDOWN", help="also replace this script's section of that file (BENCHMARKS.md, docs/recipes.md)")
    args = p.parse_args(argv)
    args.families = [f.strip().lower() for f in args.families.split(",") if f.strip()]
    args.data = [d.strip() for d in args.data.split(",") if d.strip()]
    args.runs = args.runs or os.path.splitext(args.json)[0] + "_runs"
    if args.lvunet_backbone not in ("none", "imagenet") and not os.path.isfile(args.lvunet_backbone):
        p.error(f"--lvunet-backbone: {args.lvunet_backbone} is neither none, imagenet nor a file")
    if os.path.isfile(args.lvunet_backbone):
        args.lvunet_backbone = os.path.abspath(args.lvunet_backbone)
    return args


def _short_hash(text):
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def make_split(data, folder, seed):
    """The split file of a dataset (made once, then reused): 80/10/10 of its image stems."""
    from keras_litenext.data import find_pairs, save_splits, split_stems
    from keras_litenext.data.medical import is_medical

    path = os.path.join(folder, "splits", f"{os.path.basename(data)}-{_short_hash(f'{data}|{seed}')}.json")
    if not os.path.exists(path):
        pairs = find_pairs(data)
        if any(is_medical(p.image) for p in pairs):
            raise ValueError(f"{data}: DICOM/NIfTI volumes are split by slice; give a folder of 2-D images")
        save_splits(path, split_stems([p.stem for p in pairs], fractions=SPLIT, seed=seed), seed=seed, data=data)
    return path


def key(job):
    """What makes a run the same run: a finished one with this key is skipped."""
    fields = ("data", "family", "recipe", "seed", "image_size", "epochs", "split_seed", "recipe_settings")
    return json.dumps({k: job[k] for k in fields}, sort_keys=True)


def plan(args):
    """Every run of the command, each a job dict (its `TrainConfig` settings checked now), pairs
    of recipes next to each other so that a partial run already compares."""
    from keras_litenext.models.registry import get_spec
    from keras_litenext.runs.settings import TrainConfig

    jobs = []
    for data in map(os.path.abspath, args.data):
        if not (os.path.isdir(os.path.join(data, "images")) and os.path.isdir(os.path.join(data, "masks"))):
            raise ValueError(f"--data: {data} is not a folder with images/ and masks/")
        splits = make_split(data, args.runs, args.split_seed)
        for family in args.families:
            multiple = get_spec(family).size_multiple
            size = -(-args.image_size // multiple) * multiple
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                for recipe in RECIPES:
                    job = {"data": data, "dataset": os.path.basename(data), "family": family, "recipe": recipe, "seed": seed,
                           "image_size": size, "epochs": args.epochs, "split_seed": args.split_seed,
                           "recipe_settings": recipe_settings(family, recipe, args.lvunet_backbone)}
                    output = os.path.join(args.runs, job["dataset"], f"{family}-{recipe}-seed{seed}-{_short_hash(key(job))}")
                    job["settings"] = {"model": family, "data": data, "image_size": size, "epochs": args.epochs, "seed": seed,
                                       "splits": splits, "output": output, "verbose": 0, **job["recipe_settings"]}
                    TrainConfig.from_dict(job["settings"]).validate()
                    jobs.append(job)
    return jobs


# -- one run ---------------------------------------------------------------------------------------
CHILD_CODE = """
__keras_litenext_command__ = True
import json, os, shutil, sys
from keras_litenext.runs import BACKUP, METRICS_FILE
from keras_litenext.runs.settings import TrainConfig
from keras_litenext.train import train
from keras_litenext.train.callbacks import RunBackup
settings = json.loads(sys.argv[1])
out = settings["output"]
if RunBackup(os.path.join(out, BACKUP)).latest()[1] is not None:  # a killed run: on from its last epoch
    train(TrainConfig(output=out, resume=True, verbose=0), given=frozenset())
elif not os.path.exists(os.path.join(out, METRICS_FILE)):
    shutil.rmtree(out, ignore_errors=True)  # a start that kept no epoch
    train(TrainConfig.from_dict(settings))
"""


def train_run(job):
    """Train one job in a child Python (or finish / read what an earlier one left) and return its
    record: the job, its test Dice (mean over the test images and their std, per image), IoU,
    training seconds. Raises RuntimeError naming the log file when the run fails."""
    out = job["settings"]["output"]
    log = out + ".log"
    os.makedirs(os.path.dirname(out), exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])), TF_CPP_MIN_LOG_LEVEL="2")
    start = time.time()
    with open(log, "w", encoding="utf-8") as f:
        done = subprocess.run([sys.executable, "-c", CHILD_CODE, json.dumps(job["settings"])], env=env, stdout=f, stderr=subprocess.STDOUT,
                              check=False)
    if done.returncode != 0:
        with open(log, encoding="utf-8", errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
        raise RuntimeError(f"{lines[-1] if lines else f'exit status {done.returncode}'} (log: {log})")
    with open(os.path.join(out, "metrics.json"), encoding="utf-8") as f:
        metrics = json.load(f)
    if metrics["dice"]["mean"] is None:
        raise RuntimeError(f"no test image of {out} has a foreground: its Dice is undefined")
    per_image = [None if v is None or not math.isfinite(v) else v for v in metrics["per_image"]["dice"]]
    return {k: v for k, v in job.items() if k != "settings"} | {
        "output": out, "dice": metrics["dice"]["mean"], "dice_image_std": metrics["dice"]["std"], "iou": metrics["iou"]["mean"],
        "test_images": metrics.get("counted"), "params": metrics.get("params"), "train_seconds": metrics.get("train_seconds"),
        "wall_seconds": round(time.time() - start, 1), "per_image_dice": per_image}


def load_state(path):
    if not os.path.exists(path):
        return {"runs": [], "failed": {}}
    with open(path, encoding="utf-8") as f:
        state = json.load(f)
    state.setdefault("failed", {})
    return state


def save_state(path, state):
    from keras_litenext.utils import write_json

    write_json(path, state)  # atomic: a temporary file, then os.replace


def run_all(jobs, path, log=print):
    """Run the jobs not yet in the state file `path`, saving it after each; returns the state."""
    state = load_state(path)
    done = {key(r) for r in state["runs"]}
    for i, job in enumerate(jobs, 1):
        label = f"[{i}/{len(jobs)}] {job['dataset']} {job['family']} {job['recipe']} seed {job['seed']} {job['image_size']}²"
        k = key(job)
        if k in done:
            log(f"{label}: in {path}, skipped")
            continue
        try:
            record = train_run(job)
        except Exception as err:  # noqa: BLE001 - one failed run is listed; the others go on
            state["failed"][k] = {"label": label, "error": f"{type(err).__name__}: {err}"}
            log(f"{label}: failed ({type(err).__name__}: {err})")
        else:
            state["runs"].append(record)
            state["failed"].pop(k, None)
            done.add(k)
            log(f"{label}: test Dice {record['dice']:.4f} (per-image std {record['dice_image_std']:.3f}), {record['wall_seconds']:.0f} s")
        save_state(path, state)
    return state


# -- the report --------------------------------------------------------------------------------------
def _verdict(pair):
    if pair["at_least"] is None:
        return "– (one seed)"
    return "**above**" if pair["above"] else ("yes" if pair["at_least"] else "no")


def table(jobs, runs):
    """The Markdown table of the finished `runs` among `jobs`: two rows per dataset and family."""
    wanted = {key(j) for j in jobs}
    found = {}
    for r in runs:
        if key(r) in wanted:
            found.setdefault((r["dataset"], r["family"], r["image_size"]), {}).setdefault(r["recipe"], {})[r["seed"]] = r
    lines = [("| dataset | family | size | recipe | seeds | test Dice, mean ± std over seeds | per-image std (mean) "
              "| default − authors, mean ± SE | ≥ authors − 1 SE |"), "|---|---|---|---|---|---|---|---|---|"]
    for group in dict.fromkeys((j["dataset"], j["family"], j["image_size"]) for j in jobs):
        by_recipe = found.get(group, {})
        common = sorted(set(by_recipe.get("default", {})) & set(by_recipe.get("authors", {})))
        pair = paired(*({s: by_recipe[r][s]["dice"] for s in common} for r in RECIPES)) if common else None
        for recipe in RECIPES:
            seeds = by_recipe.get(recipe, {})
            if seeds:
                s = summary(r["dice"] for r in seeds.values())
                spread = "" if math.isnan(s["std"]) else f" ± {s['std']:.4f}"
                dice = f"{s['mean']:.4f}{spread}"
                image_std = f"{np.mean([r['dice_image_std'] for r in seeds.values()]):.3f}"
            else:
                dice = image_std = "not run"
            cells = ["", ""]
            if recipe == "default" and pair is not None:
                se = "" if math.isnan(pair["se"]) else f" ± {pair['se']:.4f}"
                cells = [f"{pair['mean']:+.4f}{se} ({pair['n']} pairs)", _verdict(pair)]
            lines.append(f"| {group[0]} | {group[1]} | {group[2]}² | {recipe} | {len(seeds)} | {dice} | {image_std} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def write_section(path, text):
    """Replace this script's section of a Markdown file (between the lines START and END), or add
    it at the end. Only whole marker lines count: a marker quoted in the text is left alone."""
    if HERE not in sys.path:
        sys.path.insert(0, HERE)
    from sections import write_section as write

    write(path, START, END, text, TITLE, before=None)


def header(args, argv, started):
    import keras
    import tensorflow as tf

    if HERE not in sys.path:
        sys.path.insert(0, HERE)
    import run as suite  # benchmarks/run.py: the machine line

    command = "python benchmarks/recipes.py " + " ".join(sys.argv[1:] if argv is None else argv)
    from keras_litenext.version import __version__

    return (f"Command `{command.strip()}`, {datetime.date.today()}; {suite.machine()}; load average {os.getloadavg()[0]:.1f} "
            f"at the end ({(time.time() - started) / 60:.0f} min); keras-litenext {__version__}, tensorflow {tf.__version__}, "
            f"keras {keras.__version__}. One 80/10/10 split per dataset (seed {args.split_seed}) for every run; {args.epochs} epochs "
            f"for both recipes; sizes from --image-size {args.image_size}, rounded up to each family's size multiple; "
            f"LV-UNet authors' trunk: {args.lvunet_backbone}. Test Dice: the per-image mean over the test split (images with an "
            "empty mask left out), its mean ± sample std over seeds; per-image std: the std over the test images, averaged over "
            "seeds. The paired difference is over the seeds both recipes finished; SE = its sample std / √n. "
            "Recipes and deviations: docs/recipes.md.\n\n")


def main(argv=None):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = parse_args(argv)
    started = time.time()
    try:
        jobs = plan(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    state = run_all(jobs, args.json, log=lambda msg: print(msg, flush=True))
    text = header(args, argv, started) + table(jobs, state["runs"])
    failed = [f for k, f in state["failed"].items() if k in {key(j) for j in jobs}]
    if failed:
        text += "\nFailed runs: " + "; ".join(f"{f['label'].split('] ', 1)[1]} ({f['error']})" for f in failed) + "\n"
    print(text)
    if args.write:
        write_section(args.write, text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
