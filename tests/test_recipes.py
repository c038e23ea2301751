"""`benchmarks/recipes.py` (the default recipe against the authors'): the recipes as valid
settings, the statistics against an independent computation, resuming after a kill with a fake
trainer; and `TrainConfig.augment` as a dict of `augmenter` arguments."""

import importlib.util
import json
import math
import os
import shutil
import statistics
import sys

import numpy as np
import pytest

from keras_litenext.runs.settings import TrainConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")


def load_recipes():
    if BENCH not in sys.path:
        sys.path.insert(0, BENCH)
    spec = importlib.util.spec_from_file_location("bench_recipes", os.path.join(BENCH, "recipes.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


recipes = load_recipes()


@pytest.fixture
def small_data(tmp_path):
    """16 pairs of the bundled sample, in images/ and masks/."""
    from keras_litenext.data import sample_data_dir

    src, dst = sample_data_dir(), tmp_path / "nuclei"
    names = sorted(os.listdir(os.path.join(src, "images")))[:16]
    for sub in ("images", "masks"):
        os.makedirs(dst / sub)
        for name in names:
            shutil.copy(os.path.join(src, sub, name), dst / sub / name)
    return str(dst)


# -- the recipes --------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["litenext", "ulite", "lvunet"])
@pytest.mark.parametrize("recipe", ["default", "authors"])
def test_each_recipe_is_a_valid_train_config(family, recipe):
    settings = recipes.recipe_settings(family, recipe)
    config = TrainConfig.from_dict({"model": family, "data": "x", "image_size": 128, "epochs": 2, **settings}).validate()
    assert json.loads(json.dumps(config.to_dict()))["augment"] == config.augment  # what config.json holds
    if recipe == "default":
        assert settings == {} and config.augment is True and config.weight_decay == TrainConfig().weight_decay


def test_the_authors_recipes_say_what_their_code_does():
    import inspect

    from keras_litenext.losses import REFERENCE_MWL_WEIGHTS
    from keras_litenext.models.lvunet import LVUNet

    ulite = recipes.recipe_settings("ulite", "authors")
    assert (ulite["loss"], ulite["lr"], ulite["weight_decay"], ulite["schedule"], ulite["batch_size"]) == ("dice", 2e-3, 0.0, "plateau", 8)
    assert ulite["augment"] == {"rotation": 15, "flip": True, "scale": 0.0, "brightness": 0.0, "contrast": 0.0, "blur": 0.0}
    lvunet = recipes.recipe_settings("lvunet", "authors")
    assert (lvunet["loss"], lvunet["lr"], lvunet["weight_decay"], lvunet["schedule"]) == ("bce_dice", 1e-3, 1e-4, "cosine")
    assert lvunet["augment"]["rotation"] == 0 and lvunet["model_kwargs"] == {"preprocessing": "imagenet"}
    trunk = recipes.recipe_settings("lvunet", "authors", lvunet_backbone="imagenet")["model_kwargs"]
    assert trunk == {"backbone_weights": "imagenet", "padding": "keras"}
    assert set(trunk) | {"preprocessing"} <= set(inspect.signature(LVUNet).parameters)
    litenext = recipes.recipe_settings("litenext", "authors")
    assert tuple(litenext["mwl_weights"]) == REFERENCE_MWL_WEIGHTS and litenext["augment"]["blur"] == 0.5
    assert "lr" not in litenext  # not in the repository: the default's
    with pytest.raises(ValueError, match="no authors' recipe"):
        recipes.recipe_settings("mednext", "authors")


# -- TrainConfig.augment as a dict --------------------------------------------------------------
def test_augment_accepts_augmenter_arguments_and_names_a_bad_key():
    config = TrainConfig(augment={"rotation": 15, "flip": True, "blur": 0}).validate()
    again = TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))).validate()
    assert again.augment == {"rotation": 15, "flip": True, "blur": 0}
    assert TrainConfig(augment={}).validate().augment is True and TrainConfig(augment=False).validate().augment is False
    for bad, word in [({"rotaton": 15}, "rotaton"), ({"rotation": 400}, "rotation"), ({"flip": 1}, "flip"),
                      ({"blur": "0.5"}, "blur"), ("yes", "true, false")]:
        with pytest.raises(ValueError, match=word) as err:
            TrainConfig(augment=bad).validate()
        assert str(err.value).startswith("--augment") and "\n" not in str(err.value)


def test_training_builds_the_augmenter_the_setting_names(monkeypatch):
    from keras_litenext.tasks import get_task
    from keras_litenext.tasks.segmentation import SegmentationTask
    from keras_litenext.train.loop import build_datasets

    made = []
    original = SegmentationTask.augmenter
    monkeypatch.setattr(SegmentationTask, "augmenter", lambda self, seed=None, **o: made.append(o) or original(self, seed, **o))
    images = np.zeros((4, 32, 32, 3), np.uint8)
    arrays = {k: (images, np.zeros((4, 32, 32, 1), np.uint8)) for k in ("train", "val", "test")}
    for augment, expected in [({"rotation": 15, "blur": 0.0}, [{"rotation": 15, "blur": 0.0}]), (True, [{}]), (False, [])]:
        made.clear()
        build_datasets(TrainConfig(model="ulite", task="binary", num_classes=2, batch_size=2, augment=augment), arrays)
        assert made == expected
    assert original(get_task("binary", num_classes=2), 1, rotation=15).config["rotation"] == 15.0
    classify = get_task("classification", num_classes=2).augmenter(seed=1, rotation=5).config
    assert (classify["rotation"], classify["scale"], classify["blur"]) == (5.0, 0.0, 0.0)  # its own defaults kept


# -- statistics ------------------------------------------------------------------------------------
def test_summary_and_paired_match_an_independent_computation():
    rng = np.random.default_rng(0)
    scores = rng.uniform(0.7, 0.9, 5).tolist()
    s = recipes.summary(scores)
    assert s["n"] == 5 and s["mean"] == pytest.approx(statistics.mean(scores)) and s["std"] == pytest.approx(statistics.stdev(scores))
    default = {seed: 0.8 + 0.01 * seed for seed in range(4)}
    authors = {seed: 0.79 + 0.02 * (seed % 2) for seed in reversed(range(4))}  # another order: paired by seed
    diffs = [default[k] - authors[k] for k in range(4)]
    pair = recipes.paired(default, authors)
    assert pair["n"] == 4 and pair["mean"] == pytest.approx(statistics.mean(diffs))
    assert pair["se"] == pytest.approx(statistics.stdev(diffs) / math.sqrt(4))


@pytest.mark.parametrize("diffs, at_least, above", [
    ([0.02, 0.03, 0.025], True, True),  # clearly better
    ([-0.01, 0.012, -0.004], True, False),  # within one SE below
    ([-0.03, -0.02, -0.025], False, False),  # clearly worse
])
def test_the_verdict(diffs, at_least, above):
    pair = recipes.paired({i: 0.8 + d for i, d in enumerate(diffs)}, {i: 0.8 for i in range(3)})
    assert (pair["at_least"], pair["above"]) == (at_least, above)


def test_broken_inputs_raise():
    with pytest.raises(ValueError, match="seeds differ"):
        recipes.paired({0: 0.8, 1: 0.9}, {0: 0.8, 2: 0.9})
    with pytest.raises(ValueError, match="finite"):
        recipes.summary([0.8, float("nan")])
    with pytest.raises(ValueError, match="finite"):
        recipes.summary([])
    one = recipes.paired({3: 0.9}, {3: 0.8})
    assert math.isnan(one["se"]) and one["at_least"] is None and recipes._verdict(one) == "– (one seed)"


# -- the harness: plan, skip, resume ------------------------------------------------------------------
def fake_trainer(calls, fail_at=None, error=KeyboardInterrupt):
    def train_run(job):
        calls.append(recipes.key(job))
        if fail_at is not None and len(calls) == fail_at:
            raise error("stopped")
        bonus = 0.01 if job["recipe"] == "default" else 0.0
        return {k: v for k, v in job.items() if k != "settings"} | {
            "output": job["settings"]["output"], "dice": 0.8 + bonus + 0.001 * job["seed"], "dice_image_std": 0.1,
            "iou": 0.7, "wall_seconds": 0.0}

    return train_run


def test_resume_skips_the_finished_runs_after_a_kill(tmp_path, small_data, monkeypatch, capsys):
    out = tmp_path / "out.json"
    argv = ["--families", "ulite,lvunet", "--data", small_data, "--seeds", "2", "--image-size", "64", "--epochs", "1",
            "--json", str(out), "--write", str(tmp_path / "page.md")]
    (tmp_path / "page.md").write_text(f"# Page\n\nquoted `{recipes.START}`\n\n{recipes.START}\nplaceholder\n{recipes.END}\n\nafter\n")
    calls = []
    monkeypatch.setattr(recipes, "train_run", fake_trainer(calls, fail_at=3))
    with pytest.raises(KeyboardInterrupt):  # killed during the third run
        recipes.main(argv)
    assert len(json.loads(out.read_text())["runs"]) == 2

    jobs = recipes.plan(recipes.parse_args(argv))
    assert len(jobs) == 8 and len({j["settings"]["splits"] for j in jobs}) == 1  # one split for every run
    assert {(j["family"], j["image_size"]) for j in jobs} == {("ulite", 64), ("lvunet", 128)}  # rounded up to 128
    calls2 = []
    monkeypatch.setattr(recipes, "train_run", fake_trainer(calls2))
    assert recipes.main(argv) == 0
    assert calls2 == [recipes.key(j) for j in jobs[2:]]  # the killed run again, then the rest
    text = capsys.readouterr().out
    assert text.count("skipped") == 2 and "| ulite | 64² | default | 2 | 0.8105 ± 0.0007 |" in text
    assert "+0.0100 ± 0.0000 (2 pairs) | **above** |" in text and "| lvunet | 128² | authors | 2 |" in text

    calls3 = []
    monkeypatch.setattr(recipes, "train_run", fake_trainer(calls3))
    assert recipes.main(argv) == 0 and calls3 == []  # everything is in the JSON
    page = (tmp_path / "page.md").read_text()
    assert page.count(recipes.START) == 2 and f"quoted `{recipes.START}`" in page  # the quoted marker is text
    assert "placeholder" not in page and "| nuclei | ulite | 64² | default |" in page and page.endswith("after\n")


def test_a_failed_run_is_listed_and_tried_again(tmp_path, small_data, monkeypatch, capsys):
    out = tmp_path / "out.json"
    argv = ["--families", "ulite", "--data", small_data, "--seeds", "1", "--image-size", "32", "--epochs", "1", "--json", str(out)]
    monkeypatch.setattr(recipes, "train_run", fake_trainer([], fail_at=2, error=RuntimeError))
    assert recipes.main(argv) == 1
    text = capsys.readouterr().out
    assert "failed (RuntimeError: stopped)" in text and "Failed runs: nuclei ulite authors seed 0 32²" in text
    assert "| ulite | 32² | authors | 0 | not run |" in text
    calls = []
    monkeypatch.setattr(recipes, "train_run", fake_trainer(calls))
    assert recipes.main(argv) == 0 and len(calls) == 1 and json.loads(out.read_text())["failed"] == {}
    assert recipes.main(["--families", "mednext", "--data", small_data, "--json", str(out)]) == 2


def test_one_real_run_of_the_authors_recipe(tmp_path, small_data):
    """One tiny U-Lite run in its own process, with the authors' augmentation dict, read back."""
    args = recipes.parse_args(["--families", "ulite", "--data", small_data, "--seeds", "1", "--image-size", "32",
                               "--epochs", "1", "--json", str(tmp_path / "out.json")])
    job = next(j for j in recipes.plan(args) if j["recipe"] == "authors")
    record = recipes.train_run(job)
    assert 0.0 <= record["dice"] <= 1.0 and record["test_images"] >= 1 and len(record["per_image_dice"]) == 2
    stored = json.loads((tmp_path / "out_runs" / "nuclei" / os.path.basename(record["output"]) / "config.json").read_text())
    assert stored["augment"]["rotation"] == 15 and stored["splits"] == job["settings"]["splits"]
