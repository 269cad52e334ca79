"""The package's house rules, read from its source with `ast` (nothing is imported):

- no import circle between modules (imports inside functions count: they only delay a circle);
- no module imports another module's `_private` name, or reaches one through a module alias;
- the reference networks know nothing of their fast paths (the engine is chosen above them);
- every `E4E_*` environment variable is read in `settings.py`, torchrun's variables in `dist.py`,
  and progress bars are drawn by `progress.py` only;
- modules stay small enough to read (the few that are one long job are named, with why).
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "e4e_cli"

#: modules allowed over MAX_LINES, and why (one job each, split would only scatter it)
LONG_MODULES = {
    "alignment": "the FFHQ alignment: dlib detection on a reduced photo, landmarks, the quad and the warp",
}
MAX_LINES = 560

#: the layers, top to bottom: a module imports from its own layer or the ones below, never above
#: (scripts/make_layout_diagram.py draws this table as docs/layout.png)
LAYERS = [
    ("entry points", "the command line and the local page", ["", "__main__", "cli", "cli.*", "ui", "ui.*"]),
    ("jobs", "work over folders: invert, edit, evaluate, datasets, paste-back, training",
     ["jobs", "jobs.*", "train", "train.*"]),
    ("library", "the model and what is done with codes and images",
     ["model", "devices", "editing", "boundaries", "analysis", "charts", "compositing", "alignment", "metrics", "synthetic",
      "refine", "pti", "pti_clip", "projection", "video", "facetrack",
      "styleclip", "textedit"]),
    ("networks and weights", "reference modules, fast paths, checkpoints, the weights folder",
     ["nn", "nn.*", "checkpoint", "hyperstyle_ckpt", "weights", "weights.*",
      "clip_text"]),
    ("foundations", "facts and plumbing every layer uses",
     ["domains", "settings", "dist", "progress", "errors", "fsutil", "digests", "images", "npzfiles"]),
]


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _resolve(current: str, level: int, target: str | None) -> str:
    """The dotted name (inside the package) that `from <dots><target>` in `current` means."""
    base = current.split(".") if current else []
    if not _is_package(current):
        base = base[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join([p for p in base + (target.split(".") if target else []) if p])


def _imports(name: str):
    """(imported module, imported names, node) for every import of a package module in `name`."""
    return _imports_in(name, ast.parse(MODULES[name].read_text()))


def _imports_in(name: str, tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                mod = _resolve(name, node.level, node.module)
            elif node.module and (node.module == "e4e_cli" or node.module.startswith("e4e_cli.")):
                mod = node.module[len("e4e_cli."):] if node.module != "e4e_cli" else ""
            else:
                continue
            yield mod, [a.name for a in node.names], node
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("e4e_cli."):
                    yield a.name[len("e4e_cli."):], [], node


def _edges(name: str) -> set[str]:
    out = set()
    for mod, names, _ in _imports(name):
        subs = {f"{mod}.{n}" if mod else n for n in names}  # `from . import x` / `from .pkg import module`
        subs &= set(MODULES)
        out |= subs
        if mod in MODULES and (not names or len(subs) < len(names)):  # names from the module itself
            out.add(mod)
    out.discard(name)
    return out


GRAPH = {name: _edges(name) for name in MODULES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_checker_sees_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle():
    assert len(MODULES) > 30 and sum(map(len, GRAPH.values())) > 60, "the import reader found too little"
    assert _cycles(GRAPH) == []


def _private(n: str) -> bool:
    return n.startswith("_") and not (n.startswith("__") and n.endswith("__"))


def _dotted(node) -> str | None:
    """`a.b.c` for an attribute chain of plain names, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([node.id, *reversed(parts)])


def _private_uses(name: str, tree: ast.AST) -> list[str]:
    """Private names of other package modules that `name` imports or reaches through a module:
    `from .x import _p`, `x._p` after `from . import x`, `y._p` after `import e4e_cli.x as y`,
    and `e4e_cli.x._p` after `import e4e_cli.x`."""
    bad, aliases = [], {}  # local name -> package module
    for mod, names, node in _imports_in(name, tree):
        for n in names:
            if _private(n):
                bad.append(f"{name}: from {mod or 'e4e_cli'} import {n}")
        if isinstance(node, ast.ImportFrom):
            for a in node.names:
                sub = f"{mod}.{a.name}" if mod else a.name
                if sub in MODULES:
                    aliases[a.asname or a.name] = sub
        else:
            for a in node.names:
                if a.asname and a.name.startswith("e4e_cli."):
                    aliases[a.asname] = a.name[len("e4e_cli."):]
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Attribute) and _private(node.attr)):
            continue
        owner = _dotted(node.value)
        if owner in aliases or (owner or "").startswith("e4e_cli.") and owner[len("e4e_cli."):] in MODULES:
            bad.append(f"{name}: {owner}.{node.attr}")
    return bad


def test_no_private_name_is_imported_from_another_module():
    bad = [b for name in MODULES for b in _private_uses(name, ast.parse(MODULES[name].read_text()))]
    assert bad == []


def test_the_private_name_checker_sees_every_way_in():
    name = "jobs.edit"
    for src in ("from ..model import _x", "from .. import model\nmodel._x()", "import e4e_cli.model as m\nm._x()",
                "import e4e_cli.model\ne4e_cli.model._x()", "from e4e_cli import model as mm\nmm._x"):
        assert _private_uses(name, ast.parse(src)), src
    assert _private_uses(name, ast.parse("from .. import model\nmodel.x()\nmodel.__doc__")) == []


def test_reference_networks_do_not_know_their_fast_paths():
    assert "nn.networks" in GRAPH
    assert not {m for m in GRAPH["nn.networks"] if m.startswith("nn.fast")}, GRAPH["nn.networks"]
    assert GRAPH["nn.networks"] <= {"nn.ops"}, GRAPH["nn.networks"]


def layer_of(name: str) -> int:
    for i, (_, _, patterns) in enumerate(LAYERS):
        for pat in patterns:
            if name == pat or (pat.endswith(".*") and name.startswith(pat[:-1])):
                return i
    raise KeyError(f"module {name!r} is in no layer: add it to LAYERS")


def test_imports_point_down_the_layers():
    up = [f"{a} -> {b}" for a, edges in GRAPH.items() for b in edges if layer_of(b) < layer_of(a)]
    assert up == []


def test_models_and_jobs_know_nothing_of_the_command_line():
    for name, edges in GRAPH.items():
        if not (name == "cli" or name.startswith("cli.")) and name not in ("__main__",):
            assert not {e for e in edges if e == "cli" or e.startswith("cli.")}, (name, edges)
    for name in ("nn.networks", "nn.ops", "model", "editing", "compositing", "domains", "checkpoint"):
        assert not {e for e in GRAPH[name] if e.startswith(("jobs", "ui", "train"))}, (name, GRAPH[name])


def _string_constants(name: str, tree: ast.AST | None = None):
    tree = tree or ast.parse(MODULES[name].read_text())
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.value


#: a whole string constant naming an environment variable, or the prefix a name is built from
#: (`environ["E4E_" + x]`, f"E4E_{x}")
ENV_NAMES = [(r"E4E_[A-Z0-9_]*", "settings"), (r"(RANK|WORLD_SIZE|LOCAL_RANK)", "dist")]


@pytest.mark.parametrize("pattern, home", ENV_NAMES)
def test_environment_variables_have_one_reader(pattern, home):
    readers = {name for name in MODULES for s in _string_constants(name) if re.fullmatch(pattern, s)}
    assert readers == {home}


def test_the_environment_checker_sees_built_names():
    for src in ('os.environ["E4E_" + x]', 'os.environ.get(f"E4E_{x}")', 'os.getenv("E4E_DEBUG")'):
        assert any(re.fullmatch(ENV_NAMES[0][0], s) for s in _string_constants("x", ast.parse(src))), src
    assert not any(re.fullmatch(ENV_NAMES[0][0], s) for s in _string_constants("x", ast.parse('"set E4E_DEBUG=1"')))


def _draws_bars(name: str, tree: ast.AST | None = None) -> bool:
    """Whether a module imports a progress-bar library: tqdm (any submodule) or rich.progress."""
    for mod, names, _ in _walk_all_imports(name, tree):
        if mod == "tqdm" or mod.startswith(("tqdm.", "rich.progress")) or (mod == "rich" and "progress" in names):
            return True
    return False


def test_progress_bars_have_one_home():
    assert {name for name in MODULES if _draws_bars(name)} == {"progress"}


def test_the_progress_checker_sees_every_import():
    for src in ("from tqdm.auto import tqdm", "import tqdm", "from tqdm import trange", "import rich.progress",
                "from rich.progress import Progress", "from rich import progress"):
        assert _draws_bars("x", ast.parse(src)), src
    assert not _draws_bars("x", ast.parse("from rich.console import Console"))


def _walk_all_imports(name: str, tree: ast.AST | None = None):
    tree = tree or ast.parse(MODULES[name].read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and not node.level and node.module:
            yield node.module, [a.name for a in node.names], node
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, [], node


def test_modules_stay_readable():
    long = {name: n for name, path in MODULES.items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert set(long) <= set(LONG_MODULES), long
