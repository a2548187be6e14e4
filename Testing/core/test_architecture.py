"""The package layout of docs/architecture.md: layers, no import cycle, torch-free parts, the recipe
registry as the one place a recipe is added."""

import ast
import functools
import subprocess
import sys
from pathlib import Path

import pytest

from WeakSegLib import registry
from WeakSegLib.engine.train.recipe import Recipe

PACKAGE = Path(__file__).resolve().parents[2] / "WeakSegLib"
#: module prefix → layer (longest prefix wins); see docs/architecture.md
LAYERS = {"WeakSegLib": 0, "WeakSegLib.errors": 1.0, "WeakSegLib.events": 1.0, "WeakSegLib.options": 1.1,
          "WeakSegLib.registry": 1.2, "WeakSegLib.config": 1.3, "WeakSegLib.io": 2, "WeakSegLib.nets": 3, "WeakSegLib.losses": 3,
          "WeakSegLib.engine": 4, "WeakSegLib.engine.samples": 4.0, "WeakSegLib.engine.predict": 4.1,
          "WeakSegLib.engine.train": 4.2, "WeakSegLib.recipes": 5, "WeakSegLib.tightener": 5, "WeakSegLib.app": 6,
          "WeakSegLib.mrml": 7, "WeakSegLib.__main__": 8}
#: what must import without torch (Slicer's own process, `weakseg --help`)
TORCH_FREE = ("WeakSegLib", "WeakSegLib.config", "WeakSegLib.events", "WeakSegLib.errors", "WeakSegLib.options",
              "WeakSegLib.registry", "WeakSegLib.io.card", "WeakSegLib.io.boxes", "WeakSegLib.io.volume",
              "WeakSegLib.io.sizes", "WeakSegLib.io.canonical", "WeakSegLib.app.cli", "WeakSegLib.app.jobs",
              "WeakSegLib.app.job_types", "WeakSegLib.app.dependencies",
              "WeakSegLib.app.progress", "WeakSegLib.mrml.tasks", "WeakSegLib.mrml.nodes")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every WeakSegLib module ``path`` imports, at file scope or inside a function."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("WeakSegLib")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("WeakSegLib"):
            for alias in node.names:  # `from WeakSegLib.app import dependencies` imports a module
                sub = f"{node.module}.{alias.name}"
                out.add(sub if (PACKAGE.parent / (sub.replace(".", "/") + ".py")).exists() else node.module)
    return out


def layer(module: str) -> tuple[int, str]:
    prefix = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[prefix], prefix


GRAPH = {module_name(p): imports_of(p) for p in PACKAGE.rglob("*.py")}


def test_no_module_imports_a_higher_layer_or_a_sibling_package():
    bad = []
    for module, imported in GRAPH.items():
        mine, home = layer(module)
        for other in imported:
            theirs, where = layer(other)
            if theirs > mine or (theirs == mine and where != home):
                bad.append(f"{module} (layer {mine}) imports {other} (layer {theirs})")
    assert not bad, "\n".join(bad)


def test_there_is_no_import_cycle():
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for other in GRAPH.get(module, ()):
            if other == module or other not in GRAPH:
                continue
            assert state.get(other) != 1, " → ".join(path + [other])
            if other not in state:
                visit(other, path + [other])
        state[module] = 2

    for module in GRAPH:
        if module not in state:
            visit(module, [module])


def test_every_module_but_the_package_itself_has_a_layer():
    assert [m for m in GRAPH if layer(m)[0] == 0] == ["WeakSegLib"]


def run_python(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=PACKAGE.parent).stdout.strip()


def test_the_vocabulary_the_slicer_side_and_the_command_line_import_no_torch():
    code = (f"import sys, importlib\nfor m in {TORCH_FREE!r}: importlib.import_module(m)\n"
            "from WeakSegLib.app.cli import build_parser\n"
            "for argv in (['--help'], ['train', '--help'], ['tighten-train', '--help'], ['tighten', '--help']):\n"
            "    try:\n        build_parser().parse_args(argv)\n    except SystemExit:\n        pass\n"
            "print(sorted(m for m in ('torch', 'monai', 'scipy', 'skimage') if m in sys.modules))")
    assert run_python(code).splitlines()[-1] == "[]"


def test_weakseg_help_imports_no_torch():
    code = ("import sys, runpy\nsys.argv = ['weakseg', '--help']\n"
            "try:\n    runpy.run_module('WeakSegLib', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules)")
    assert run_python(code).splitlines()[-1] == "False"


@pytest.mark.parametrize("spec", registry.specs(), ids=lambda s: s.name)
def test_every_registry_line_names_a_recipe_class_and_declares_known_inputs(spec):
    assert issubclass(spec.load(), Recipe)
    assert set(spec.inputs()) <= set(registry.INPUT_NAMES) and spec.labels
    assert set(spec.dims) <= {2, 3} and (spec.dims == (2, 3) or spec.dims_reason)


def test_registry_refuses_a_second_recipe_of_the_same_name_and_unknown_inputs():
    with pytest.raises(ValueError, match="registered already"):
        registry.register(registry.specs()[0])
    with pytest.raises(ValueError, match="bad inputs"):
        registry.register(registry.RecipeSpec("x", "x", "x:X", labels=("scribbles",)))


def test_panel_recipes_and_the_default_come_from_the_registry():
    panel = registry.panel_choices()
    assert panel[0] == registry.AUTO_RECIPE and registry.DEFAULT_RECIPE == panel[1]
    assert "size" not in panel and "deepcut" in panel
    pick = functools.partial(registry.default_recipe, slices_per_epoch=64)
    assert pick({"boxes"}) == registry.DEFAULT_RECIPE
    assert pick({"mask"}) == "full" and pick({"sizes", "mask"}) == "size"
    assert pick({"partial"}) == "partial-ce" and registry.extras_of(["deepcut"]) == {"crf"}


def test_auto_picks_boxsup_for_slice_boxes_on_a_2d_network_of_a_small_cohort_only():
    pick = functools.partial(registry.default_recipe, slices_per_epoch=64)  # 8 batches of 8
    assert pick({"boxes"}, boxes=["slice"] * 256) == "boxsup"
    assert pick({"boxes", "mask"}, boxes=["slice"] * 10) == "boxsup"  # masks of other cases: semi-supervised
    assert pick({"boxes"}, boxes=["slice"] * 257) == registry.DEFAULT_RECIPE  # re-predicting them costs too much
    assert registry.default_recipe({"boxes"}, boxes=["slice"] * 500, slices_per_epoch=128) == "boxsup"
    assert pick({"boxes"}, boxes=["slice", "3d"]) == registry.DEFAULT_RECIPE  # a 3D box's slices are loose
    assert pick({"boxes"}, boxes=["slice"], spatial_dims=3) == registry.DEFAULT_RECIPE  # BoxSup is 2D
    assert pick({"boxes", "sizes"}, boxes=["slice"]) == "size"
    assert registry.extras_of([registry.AUTO_RECIPE]) == set().union(
        *(registry.recipe_spec(r).extras for r in registry.auto_choices()))
