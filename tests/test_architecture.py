"""The package's shape, computed from its source.

The stack, bottom to top (docs/architecture.md describes each package):

    core -> runtime -> io -> config -> data/backbones -> heads -> train -> merge
         -> evaluation -> report -> pipeline -> integrations -> cli

- the import graph (function-level imports included) has no cycle;
- a module imports only from its own layer or the layers below it, never from above;
- outside its own package, a package is reached only through its front door (its
  ``__init__``), and no module imports another module's private (``_``) name;
- no module is over 500 lines, no function over 60 lines, and no public function
  takes more than 8 parameters.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "wiseft"

# layer name -> module-name prefixes (a prefix matches the module and its submodules)
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("core", ("wiseft.core", "wiseft.resources")),
    ("runtime", ("wiseft.runtime",)),
    ("io", ("wiseft.io",)),
    ("config", ("wiseft.config",)),
    ("data/backbones", ("wiseft.data", "wiseft.backbones")),
    ("heads", ("wiseft.heads",)),
    ("train", ("wiseft.train",)),
    ("merge", ("wiseft.merge",)),
    ("evaluation", ("wiseft.evaluation",)),
    ("report", ("wiseft.report",)),
    ("pipeline", ("wiseft.pipeline",)),
    ("integrations", ("wiseft.integrations",)),
    ("cli", ("wiseft.cli", "wiseft.__main__", "wiseft")),
]
# the packages above, each with one front door (wiseft.heads is one module)
PACKAGES = ("core", "runtime", "io", "config", "data", "backbones", "train", "merge", "evaluation", "report",
            "pipeline", "integrations", "cli")
MAX_MODULE_LINES = 500


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
    assert "wiseft.core" in import_graph()["wiseft.config.errors"]
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


def package_of(module: str) -> str | None:
    """``wiseft.merge`` for ``wiseft.merge.methods.ties``; None outside the packages."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 and parts[1] in PACKAGES else None


def back_doors() -> list[str]:
    """Every import of another package's module other than its front door."""
    modules, found = module_files(), []
    for module, path in sorted(modules.items()):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for target in _targets(module, path, node, modules):
                pkg = package_of(target)
                if pkg and target != pkg and pkg != package_of(module):
                    found.append(f"{module}:{node.lineno} imports {target} (use {pkg})")
    return found


def test_other_packages_are_reached_through_their_front_door():
    """``from wiseft.merge import Interpolator``, never ``from wiseft.merge.plan import ...``
    from outside ``wiseft.merge``: a package may move its insides without its users noticing."""
    found = back_doors()
    assert not found, "imports past a package's front door:\n" + "\n".join(found)


def test_no_module_imports_another_modules_private_name():
    modules, private = module_files(), []
    for module, path in sorted(modules.items()):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("wiseft")):
                private += [f"{module}:{node.lineno} imports {a.name}" for a in node.names
                            if a.name.startswith("_") and a.name != "__version__"]
    assert not private, "private names imported from another module:\n" + "\n".join(private)


def test_no_module_over_500_lines():
    long = [f"{p.relative_to(SRC)} ({n} lines)" for p in sorted(PACKAGE.rglob("*.py"))
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES]
    assert not long, f"modules over {MAX_MODULE_LINES} lines (split by concept):\n" + "\n".join(long)


def test_layers_are_in_stack_order():
    names = [name for name, _ in LAYERS]
    assert names == ["core", "runtime", "io", "config", "data/backbones", "heads", "train", "merge", "evaluation",
                     "report", "pipeline", "integrations", "cli"]
    assert layer_of("wiseft.merge.methods.ties") == names.index("merge")
    assert layer_of("wiseft.heads") == names.index("heads")
    assert package_of("wiseft.merge.methods.ties") == "wiseft.merge" and package_of("wiseft.heads") is None


def test_the_checks_catch_what_they_name(tmp_path):
    """The front-door and private-name rules read these two lines as violations."""
    src = "from wiseft.merge.plan import Interpolator\nfrom wiseft.merge.plan import _keep_equal\n"
    tree = ast.parse(src)
    nodes = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert package_of(nodes[0].module) == "wiseft.merge" != package_of("wiseft.evaluation.sweep")
    assert nodes[0].module != package_of(nodes[0].module)
    assert [a.name for n in nodes for a in n.names if a.name.startswith("_")] == ["_keep_equal"]


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
        # base_dir is the loader's, not a setting: build_dataset passes a dataset builder the
        # config's folder, and a builder's other parameters are the kind's options (its schema)
        params = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs if x.arg not in ("self", "cls", "base_dir")]
        if len(params) > 8 and not n.name.startswith("_"):
            wide.append(f"{p}:{n.lineno} {n.name} ({len(params)} parameters)")
    assert not wide, "public functions over 8 parameters (take a settings object):\n" + "\n".join(wide)


@pytest.mark.slow
def test_config_imports_without_torch():
    import subprocess
    import sys

    code = ("import sys, wiseft.config, wiseft.core.registry, wiseft.core.templates; "
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
    from wiseft.core import DATASETS
    from wiseft.data import build_dataset

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


def _defined(path: Path) -> set[str]:
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        targets = (node.targets if isinstance(node, ast.Assign) else
                   [node.target] if isinstance(node, ast.AnnAssign) else [])
        for t in targets:
            names.update([t.id] if isinstance(t, ast.Name) else [e.id for e in getattr(t, "elts", [])])
    return names


def test_each_exported_name_has_one_home():
    """A package's front door names the submodule that defines each export, never one that
    only imports it: a name is reached through one package (the top-level ``wiseft`` names
    packages, whose front doors follow this rule)."""
    modules, elsewhere = module_files(), []
    for package, path in sorted(modules.items()):
        if path.name != "__init__.py" or package == "wiseft":
            continue
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "_SOURCES":
                for sub, names in ast.literal_eval(node.value).items():
                    defined = _defined(modules[f"{package}.{sub}"])
                    elsewhere += [f"{package}: {n} (listed under {sub})" for n in names if n not in defined]
    assert not elsewhere, "exports not defined where the front door says:\n" + "\n".join(elsewhere)
