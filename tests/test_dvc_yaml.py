"""dvc.yaml stays exact: every stage depends on precisely the package modules its command imports
(a subpackage such as `detoxsum/ppo/` as one folder), and fetch on the local dataset the params name."""

import ast
import json
from pathlib import Path

import yaml
from conftest import fixture_rows
from pipeline import copy_project, git_tracked_outputs, init_repo, run, update_params

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


def test_every_git_tracked_output_persists():
    """DVC deletes a stage's outputs before it runs unless they persist, and a git-tracked output
    (`cache: false`) cannot come back by `dvc checkout`: a failed or killed run would lose it."""
    tracked = git_tracked_outputs(REPO)
    assert tracked  # metrics, curves, summaries, predictions
    for name, path, props in tracked:
        assert props.get("persist") is True, f"stage {name}: {path} should have persist: true"


def test_fetch_depends_on_the_dataset_the_params_name():
    fetch = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["fetch"]
    assert [dep for dep in fetch["deps"] if not dep.startswith("src/")] == ["${fetch.dataset}"]
    assert {"metrics/fetch.json": {"cache": False, "persist": True}} in fetch["metrics"]


def test_editing_a_dataset_outside_the_repo_reruns_fetch_and_a_hub_dataset_still_parses(tmp_path, tiny_llama_dir):
    """Real dvc: the templated dep follows `fetch.dataset` anywhere on disk; with the data on the Hub,
    `fetch.dataset` keeps naming a path and dvc.yaml still resolves."""
    outside = tmp_path / "elsewhere" / "chats.jsonl"
    outside.parent.mkdir()
    outside.write_text("".join(json.dumps(row) + "\n" for row in fixture_rows(20)))
    project = copy_project(tmp_path / "repo")
    update_params(project, {"fetch": {"model": str(tiny_llama_dir), "dataset": str(outside)}})
    init_repo(project)
    run(["dvc", "repro", "fetch"], project)
    assert "changed" not in run(["dvc", "status", "fetch"], project).stdout
    bytecode = project / "src" / "detoxsum" / "data" / "__pycache__" / "sources.cpython-311.pyc"
    bytecode.parent.mkdir(exist_ok=True)
    bytecode.write_bytes(b"written by an import")  # as running a stage does, unless bytecode is off
    assert "changed" not in run(["dvc", "status", "fetch"], project).stdout, "bytecode made fetch stale"
    fetched = json.loads((project / "metrics" / "fetch.json").read_text())
    assert fetched["rows"]["train"] > 0
    assert fetched["dataset"] == {"source": str(outside), "kind": "local", "revision": None}

    with outside.open("a") as handle:
        handle.write(json.dumps(fixture_rows(21)[-1]) + "\n")
    status = run(["dvc", "status", "fetch"], project).stdout
    assert "changed deps" in status and f"modified:           {outside}" in status, status

    update_params(project, {"fetch": {"dataset": "data/sample", "hub_dataset": "knkarthick/dialogsum"}})
    status = run(["dvc", "status", "fetch"], project).stdout
    assert "knkarthick" not in status and "params.yaml" in status, status  # the Hub id is no dep to miss
