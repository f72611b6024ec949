"""The README's pipeline picture is the real DAG: its edges are exactly `dvc dag`'s."""

import re
import subprocess

from pipeline import REPO, tool_env


def readme_edges() -> set[tuple[str, str]]:
    block = re.search(r"```mermaid\n(.*?)```", (REPO / "README.md").read_text(), re.S).group(1)
    edges = set()
    for line in block.splitlines():
        if "-->" in line:
            sources, targets = (part.split("&") for part in line.split("-->"))
            edges |= {(s.strip(), t.strip()) for s in sources for t in targets}
    return edges


def dvc_edges() -> set[tuple[str, str]]:
    result = subprocess.run(["dvc", "dag", "--mermaid"], cwd=REPO, env=tool_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    names = dict(re.findall(r'(node\d+)\["([^"]+)"\]', result.stdout))
    return {(names[a], names[b]) for a, b in re.findall(r"(node\d+)-->(node\d+)", result.stdout)}


def test_the_readme_pipeline_picture_is_the_dvc_dag():
    assert readme_edges() == dvc_edges()
