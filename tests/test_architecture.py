"""The package's shape, computed from its source: the import graph (function-level
imports included) has no cycle and every arrow points down the stack; no function is
longer than 60 lines and no public function takes more than 8 parameters.

The stack, bottom to top (docs/architecture.md describes each layer):

    base -> config -> data/backbones -> heads -> train -> merge -> evaluate
         -> robustness/report -> pipeline -> cli

A module may import from its own layer or any layer below it, never from above.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "wiseft"

# layer name -> module-name prefixes (a prefix matches the module and its submodules)
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("wiseft.errors", "wiseft.registry", "wiseft.files", "wiseft.progress", "wiseft.runtime",
              "wiseft.metrics", "wiseft.templates", "wiseft.results", "wiseft.resources")),
    ("config", ("wiseft.config",)),
    ("data/backbones", ("wiseft.data", "wiseft.backbones")),
    ("heads", ("wiseft.heads",)),
    ("train", ("wiseft.train", "wiseft.finetune")),
    ("merge", ("wiseft.merge", "wiseft.merge_files", "wiseft.soup", "wiseft.checkpoint", "wiseft.merging")),
    ("evaluate", ("wiseft.evaluate", "wiseft.ensemble", "wiseft.multi_alpha")),
    ("robustness/report", ("wiseft.robustness", "wiseft.report", "wiseft.plots")),
    ("pipeline", ("wiseft.pipeline", "wiseft.estimate")),
    ("cli", ("wiseft.cli", "wiseft.env", "wiseft.launch", "wiseft.__main__", "wiseft.train.__main__", "wiseft")),
]


def module_files() -> dict[str, Path]:
    out = {}
    for p in PACKAGE.rglob("*.py"):
        parts = p.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


def layer_of(module: str) -> int:
    """The index of the layer whose longest prefix matches ``module``."""
    best, best_len = None, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = i, len(prefix)
    assert best is not None, f"{module} is in no layer: add it to LAYERS and docs/architecture.md"
    return best


def _targets(module: str, path: Path, node: ast.AST, modules: dict[str, Path]) -> list[str]:
    """The wiseft modules one import statement reads (``from .x import y`` is module
    ``x.y`` when that is a module, else ``x``)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "wiseft"]
    assert isinstance(node, ast.ImportFrom)
    if node.level:
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join(package + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    if base.split(".")[0] != "wiseft":
        return []
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]


def import_graph() -> dict[str, set[str]]:
    """module -> the wiseft modules it imports anywhere in its source."""
    modules = module_files()
    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                deps.update(t for t in _targets(name, path, node, modules) if t != name)
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_graph_reader_sees_function_level_and_relative_imports(tmp_path):
    assert "wiseft.config.run" in import_graph()["wiseft.config"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_import_graph_has_no_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_imports_point_down_the_stack():
    upward = []
    for module, deps in sorted(import_graph().items()):
        for dep in sorted(deps):
            if layer_of(dep) > layer_of(module):
                upward.append(f"{module} ({LAYERS[layer_of(module)][0]}) imports {dep} "
                              f"({LAYERS[layer_of(dep)][0]})")
    assert not upward, "imports pointing up the stack:\n" + "\n".join(upward)


def test_every_module_has_a_layer():
    for module in module_files():
        layer_of(module)


def _functions():
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield path.relative_to(SRC), node


def test_no_function_over_60_lines():
    long = [f"{p}:{n.lineno} {n.name} ({n.end_lineno - n.lineno + 1} lines)" for p, n in _functions()
            if n.end_lineno - n.lineno + 1 > 60]
    assert not long, "functions over 60 lines:\n" + "\n".join(long)


def test_no_public_function_over_8_parameters():
    wide = []
    for p, n in _functions():
        a = n.args
        params = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs if x.arg not in ("self", "cls")]
        if len(params) > 8 and not n.name.startswith("_"):
            wide.append(f"{p}:{n.lineno} {n.name} ({len(params)} parameters)")
    assert not wide, "public functions over 8 parameters (take a settings object):\n" + "\n".join(wide)


@pytest.mark.slow
def test_config_imports_without_torch():
    import subprocess
    import sys

    code = ("import sys, wiseft.config, wiseft.registry, wiseft.templates; "
            "bad = [m for m in ('torch', 'numpy', 'open_clip', 'transformers') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=SRC.parent)


def _doc_block(path: Path, language: str = "python") -> str:
    text = path.read_text(encoding="utf-8")
    start = text.index(f"```{language}\n") + len(f"```{language}\n")
    return text[start:text.index("```", start)]


def test_architecture_doc_worked_example_runs(tmp_path):
    """docs/architecture.md's dataset kind: registered from user code, a config builds
    it, and a bad split stops at load naming the field and the allowed values."""
    from wiseft.config import ConfigError, parse_config
    from wiseft.data import build_dataset
    from wiseft.registry import DATASETS

    code = _doc_block(SRC.parent / "docs" / "architecture.md")
    try:
        exec(compile(code, "docs/architecture.md", "exec"), {})
        (tmp_path / "my_data").mkdir()
        (tmp_path / "my_data" / "train.tsv").write_text("good film\tpos\nawful film\tneg\nfine film\tpos\n")
        ds = build_dataset({"kind": "tsv", "root": "my_data", "split": "train"}, base_dir=tmp_path)
        assert ds.classnames == ["pos", "neg"] and ds.labels == [0, 1, 0]
        assert ds.samples[1] == ("awful film", 1)
        cfg = {"backbone": {"family": "sentence_transformer", "name": "x"},
               "data": {"train": {"kind": "tsv", "root": "my_data", "split": "tran"},
                        "test": {"kind": "tsv", "root": "my_data", "split": "test"}}}
        with pytest.raises(ConfigError) as e:
            parse_config(cfg, source="c.yaml", base_dir=tmp_path)
        assert str(e.value) == "c.yaml: data.train.split: Input should be 'train' or 'test', got 'tran'"
    finally:
        DATASETS._entries.pop("tsv", None)
