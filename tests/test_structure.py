"""The package's shape, checked on its source: the task is the one dispatcher, modules stay small,
imports flow one way (no cycle; models, layers and quantization below training, export and the
command line). Each rule is a function of source text, tried on a breaking snippet too."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "keras_litenext"
TASK_NAMES = {"binary", "multiclass", "classification", "segmentation"}
MAX_LINES = 500
# packages that must not reach up into the application stages
LOWER = ("keras_litenext.models", "keras_litenext.layers", "keras_litenext.quantization")
UPPER = ("keras_litenext.train", "keras_litenext.export", "keras_litenext.cli", "keras_litenext.runs", "keras_litenext.inference")


def modules():
    """`{dotted name: path}` of every module of the package."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


# -- the task is the one dispatcher ---------------------------------------------------------------
def _is_task_name(node):
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value in TASK_NAMES
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return any(_is_task_name(e) for e in node.elts)
    return False


def _reads_output_channels(node):
    """`x.output_shape[-1]`, `len(x.output_shape)`, `logits.shape[-1]` inside a comparison."""
    for sub in ast.walk(node):
        if isinstance(sub, ast.Attribute) and sub.attr == "output_shape":
            return True
        if (isinstance(sub, ast.Subscript) and isinstance(sub.value, ast.Attribute) and sub.value.attr == "shape"
                and isinstance(sub.value.value, ast.Name) and "logit" in sub.value.value.id
                and isinstance(sub.slice, ast.UnaryOp) and getattr(sub.slice.operand, "value", None) == 1):
            return True
    return False


def _names_task(node):
    """`task.kind`, `self.task.kind`, `config.task`, `task_kind`: a task's name or kind."""
    if isinstance(node, ast.Name):
        return node.id == "task_kind"
    if not isinstance(node, ast.Attribute):
        return False
    owner = node.value.attr if isinstance(node.value, ast.Attribute) else getattr(node.value, "id", "")
    return (node.attr in ("kind", "name") and "task" in owner) or node.attr in ("task", "task_kind")


def task_dispatch(source, filename="<source>"):
    """`line: text` of each comparison with a task name, of a `.kind` attribute, or of a model's
    output channel count (the task read off a shape)."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Compare):
            continue
        operands = [node.left, *node.comparators]
        named = any(_is_task_name(o) for o in operands)
        kind = any(_names_task(o) for o in operands)
        channels = any(_reads_output_channels(o) for o in operands)
        if any(isinstance(o, ast.Constant) and o.value is None for o in operands):
            continue  # `config.task is None`: asks whether a task is set, not which
        if named or kind or channels:
            found.append(f"{filename}:{node.lineno}: {ast.get_source_segment(source, node)}")
    return found


def test_no_task_dispatch_outside_tasks():
    offenders = []
    for name, path in modules().items():
        if name == "keras_litenext.tasks" or name.startswith("keras_litenext.tasks."):
            continue
        offenders += task_dispatch(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    assert not offenders, "ask the task instead of comparing task names or channel counts:\n" + "\n".join(offenders)


@pytest.mark.parametrize("snippet", [
    'if task.kind == "classification":\n    pass',
    'if config.task in ("binary", "multiclass"):\n    pass',
    'classifier = len(model.output_shape) == 2',
    'binary = model.output_shape[-1] == 1',
    'if logits.shape[-1] == 1:\n    pass',
    'if task_kind != "classification":\n    pass',
    'if self.task.name == other:\n    pass',
])
def test_task_dispatch_rule_catches(snippet):
    assert task_dispatch(snippet)


def test_task_dispatch_rule_passes_generic_code():
    assert not task_dispatch('if task.uses_masks and x.shape[-1] == 3 and name == "litenext" and config.task is None:\n    pass')
    assert not task_dispatch('if image.dtype.kind == "f" and intensity.kind == "uint8" and logits.shape[0] != n:\n    pass')


# -- small modules ---------------------------------------------------------------------------------
def too_long(paths, limit=MAX_LINES):
    return [f"{p.relative_to(ROOT)}: {n} lines" for p in paths if (n := len(p.read_text(encoding="utf-8").splitlines())) > limit]


def test_modules_are_short():
    offenders = too_long(modules().values())
    assert not offenders, f"split these modules (one concern each, ≤ {MAX_LINES} lines):\n" + "\n".join(offenders)


def test_length_rule_catches(tmp_path, monkeypatch):
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    (tmp_path / "long.py").write_text("x = 1\n" * (MAX_LINES + 1))
    (tmp_path / "short.py").write_text("x = 1\n" * MAX_LINES)
    assert too_long([tmp_path / "long.py", tmp_path / "short.py"]) == [f"long.py: {MAX_LINES + 1} lines"]


# -- the import graph ------------------------------------------------------------------------------
def _exports(init_path):
    """Names a package's `__init__` takes from its own submodules: `{name: submodule}`."""
    package = ".".join(init_path.parent.relative_to(ROOT).parts)
    names = {}
    for node in ast.parse(init_path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(package + "."):
            for alias in node.names:
                names[alias.asname or alias.name] = node.module
    return names


def import_graph(known):
    """`{module: {modules it imports}}` over the package, every import (local ones too, since
    a call can run them). A name taken from a package's face counts as an import of the submodule
    it comes from; the face itself imports its submodules."""
    faces = {name: _exports(path) for name, path in known.items() if path.name == "__init__.py"}
    graph = {}
    for name, path in known.items():
        edges = set()
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [(a.name, None) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = name.split(".") if is_package else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                targets = [(base, a.name) for a in node.names]
            for module, attr in targets:
                if not module.startswith("keras_litenext"):
                    continue
                if attr and f"{module}.{attr}" in known:
                    edges.add(f"{module}.{attr}")
                elif attr and module in faces and attr in faces[module]:
                    edges.add(faces[module][attr])
                elif module in known:
                    edges.add(module)
        edges.discard(name)
        graph[name] = edges
    return graph


def cycles(graph):
    """Each import cycle once, as a list of modules."""
    found, state, stack = [], {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def upward(graph):
    return [f"{a} -> {b}" for a, targets in graph.items() for b in targets
            if a.startswith(LOWER) and b.startswith(UPPER)]


def test_import_graph_has_no_cycle():
    found = cycles(import_graph(modules()))
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_models_layers_quantization_import_no_application_stage():
    found = upward(import_graph(modules()))
    assert not found, "lower layers import training/export/command-line code:\n" + "\n".join(found)


def test_graph_rules_catch():
    graph = {"keras_litenext.models.x": {"keras_litenext.train.loop"}, "keras_litenext.train.loop": {"keras_litenext.models.x"}}
    assert cycles(graph) and upward(graph) == ["keras_litenext.models.x -> keras_litenext.train.loop"]
    assert not cycles({"a": {"b"}, "b": set()})


def test_ci_fails_a_skip_for_a_missing_package():
    """`.ci/run` sets KERAS_LITENEXT_STRICT_SKIPS=1; conftest then fails the run on such a skip."""
    from conftest import missing_package_skip

    assert missing_package_skip("could not import 'jax': No module named 'jax'")
    assert missing_package_skip("MediaPipe's metadata writers are not installed (pip install ...)")
    assert not missing_package_skip("any size is valid") and not missing_package_skip("no PyTorch reference")
    assert "KERAS_LITENEXT_STRICT_SKIPS=1" in (ROOT / ".ci" / "run").read_text()
