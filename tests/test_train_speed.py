"""`benchmarks/train_speed.py`'s pure parts, without torch: its arguments, table and section markers."""

import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "train_speed.py")
REQUIRED = ["--authors", "/tmp/a", "--torch-python", "/usr/bin/python3"]


@pytest.fixture(scope="module")
def ts():
    spec = importlib.util.spec_from_file_location("bench_train_speed", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_arguments_defaults_and_values(ts):
    args = ts.parse_args(REQUIRED)
    assert (args.models, args.size, args.batch, args.steps, args.rounds, args.threads) == (["litenext", "ulite", "lvunet"], 128, 8, 10, 3, 2)
    args = ts.parse_args(REQUIRED + ["--models", "ulite, litenext", "--size", "96", "--batch", "2", "--steps", "1"])
    assert (args.models, args.size, args.batch, args.steps) == (["ulite", "litenext"], 96, 2, 1)


@pytest.mark.parametrize("bad", [
    ["--models", "unet"], ["--models", ""], ["--models", "ulite,ulite"],
    ["--size", "0"], ["--size", "12.5"], ["--size", "96"],  # 96: not a multiple of LV-UNet's 128
    ["--models", "ulite", "--size", "80"], ["--batch", "0"], ["--batch", "two"], ["--steps", "-1"],
    ["--rounds", "2"], ["--threads", "0"],
])
def test_arguments_refused(ts, bad, capsys):
    with pytest.raises(SystemExit) as exit_:
        ts.parse_args(REQUIRED + bad)
    assert exit_.value.code == 2
    assert "error" in capsys.readouterr().err


def test_authors_and_torch_required_unless_render(ts):
    with pytest.raises(SystemExit):
        ts.parse_args(["--authors", "/tmp/a"])
    assert ts.parse_args(["--render", "x.json"]).render == "x.json"


def row(model, ours, theirs, **extra):
    return {"model": model, "size": 128, "batch": 8,
            "ours": {"img_s": ours, "params": 711201}, "theirs": {"img_s": theirs, "params": 711201, **extra}}


def test_median_ratio_and_table(ts):
    rows = [row("litenext", [3.0, 4.0, 9.0], [1.0, 2.0, 2.5]), row("ulite", [1.0, 1.0, 1.0], [], error="theirs (ulite): boom")]
    assert ts.median(rows[0]["ours"]) == 4.0 and ts.median(rows[0]["theirs"]) == 2.0
    assert ts.median(rows[1]["theirs"]) is None and ts.ratio(4.0, 2.0) == 2.0 and ts.ratio(4.0, None) is None
    text = ts.table(rows)
    lines = text.splitlines()
    assert lines[0].startswith("| model | input |") and len(lines) == 4
    assert "| litenext | 8×128² | 4.0 | 2.0 | 2.00× | 3.0, 4.0, 9.0 | 1.0, 2.0, 2.5 | 711,201 / 711,201 |" == lines[2]
    assert "| ulite | 8×128² | 1.0 | – | – |" in lines[3] and "failed: theirs (ulite): boom" in lines[3]
    reading = ts.reading(rows)
    assert "litenext: ours trains 2.00× as many images/s as theirs." in reading and "ulite: no ratio" in reading
    assert "theirs is 2.00× faster" in ts.reading([row("lvunet", [1.0, 1.0, 1.0], [2.0, 2.0, 2.0])])


def test_section_replacement_keeps_the_rest(ts):
    doc = f"# B\n\nintro\n\n{ts.TITLE}\n\n{ts.START}\nold table\n{ts.END}\n\nafter\n\n## The suite (`benchmarks/run.py`)\n\nsuite\n"
    new = ts.replace_section(doc, "new table\n")
    assert new == doc.replace("old table\n", "new table\n")
    assert ts.replace_section(new, "old table\n") == doc


def test_section_added_before_the_suite_or_at_the_end(ts):
    doc = "# B\n\nintro\n\n## The suite (`benchmarks/run.py`)\n\nsuite\n"
    new = ts.replace_section(doc, "t\n")
    assert new == f"# B\n\nintro\n\n{ts.TITLE}\n\n{ts.START}\nt\n{ts.END}\n\n## The suite (`benchmarks/run.py`)\n\nsuite\n"
    assert ts.replace_section("# B\n", "t\n") == f"# B\n\n{ts.TITLE}\n\n{ts.START}\nt\n{ts.END}\n\n"


@pytest.mark.parametrize("broken", ["only start", "only end", "reversed"])
def test_section_refuses_broken_markers(ts, broken):
    doc = {"only start": f"a\n{ts.START}\nb\n", "only end": f"a\n{ts.END}\nb\n",
           "reversed": f"a\n{ts.END}\nb\n{ts.START}\nc\n"}[broken]
    with pytest.raises(ValueError, match="markers"):
        ts.replace_section(doc, "t\n")


def test_write_section_writes_the_file(ts, tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text(f"top\n{ts.START}\nx\n{ts.END}\nbottom\n", encoding="utf-8")
    ts.write_section("y\n", str(path))
    assert path.read_text(encoding="utf-8") == f"top\n{ts.START}\ny\n{ts.END}\nbottom\n"
