"""dvc.yaml stays exact: every stage depends on precisely the package modules its command imports
(a subpackage such as `detoxsum/ppo/` as one folder)."""

import ast
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "detoxsum"


def local_imports(module_path: Path) -> set[Path]:
    """Package modules imported by one file (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(module_path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("detoxsum"):
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names if alias.name.startswith("detoxsum")]
        for name in names:
            base = REPO / "src" / name.replace(".", "/")
            for candidate in (base.with_suffix(".py"), base / "__init__.py"):
                if candidate.is_file():
                    found.add(candidate)
    return found


def as_dep(module_path: Path) -> str:
    """A module's dvc.yaml dep: its file, or its subpackage's folder."""
    relative = module_path.relative_to(PACKAGE)
    return str((PACKAGE / relative.parts[0] if len(relative.parts) > 1 and relative.parts[0] != "stages"
                else module_path).relative_to(REPO))


def transitive_imports(entry: Path) -> set[Path]:
    seen, todo = set(), [entry]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo.extend(local_imports(current))
    return seen


def test_each_stage_depends_on_exactly_the_code_it_runs():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        module = stage["cmd"].split("-m ", 1)[1].split()[0]
        entry = REPO / "src" / (module.replace(".", "/") + ".py")
        expected = {as_dep(p) for p in transitive_imports(entry)}
        declared = {dep for dep in stage["deps"] if dep.startswith("src/")}
        assert declared == expected, f"stage {name}: missing {sorted(expected - declared)}, extra {sorted(declared - expected)}"


def test_metrics_and_plots_are_small_git_tracked_files():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        for entry in stage.get("metrics", []) + stage.get("plots", []):
            (path, props), = entry.items()
            assert props.get("cache") is False, f"stage {name}: {path} should have cache: false"
