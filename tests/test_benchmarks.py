"""The benchmark suite runs end to end (tiny sizes, one round; no timing is asserted)."""

import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_benchmark_suite_smoke_run(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_run", os.path.join(ROOT, "benchmarks", "run.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    assert bench.main(["--smoke", "--models", "ulite", "--no-jax", "--no-train", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| ulite | 32² |" in text and "Floor:" in text and "images/s with augmentation" in text
    import json

    row = json.loads(out.read_text())["rows"][0]
    assert set(row["files"]) == {"fp32", "int8", "int8_strict"}
    assert row["files"]["int8"]["partitions"] == 1  # the islands file is one XNNPACK partition
    assert all(f["ms_1t"] > 0 for f in row["files"].values()) and row["keras"]["tf_b1"] > 0
    assert bench.main(["--models", "nosuchmodel", "--no-write"]) == 2
