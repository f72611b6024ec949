"""Apply a recipe (a partial params.yaml) onto params.yaml, validating the result first.

Run: `python -m detoxsum.recipe recipes/flan-t5-dialogsum.yaml [--params params.yaml] [--check]`.
Nested keys merge; lists and scalars replace. Comments and key order in params.yaml survive
(ruamel round-trip), so `git diff params.yaml` shows exactly what the recipe changed. `--check`
validates the merged params without writing them.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from detoxsum.config import STAGE_CONFIGS, build_config, yaml_problem
from detoxsum.errors import ParamsError, yaml_kind
from detoxsum.outputs import run_stage, write_text_atomic


def merge(target: dict, overrides: dict) -> dict:
    """Deep-merge `overrides` into `target` in place (mappings merge, everything else replaces)."""
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            merge(target[key], value)
        else:
            target[key] = value
    return target


def validate(params: dict, origin: str) -> None:
    unknown = sorted(set(params) - set(STAGE_CONFIGS))
    if unknown:
        raise ParamsError(f"{origin}: unknown top-level key '{unknown[0]}'")
    for stage, cls in STAGE_CONFIGS.items():
        build_config(cls, _plain(params.get(stage) or {}), stage)


def apply_recipe(recipe_path: Path, params_path: Path, write: bool = True) -> str:
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.indent(mapping=2, sequence=4, offset=2)  # params.yaml's own style: `- ` two spaces in
    yaml.representer.add_representer(  # write null as `null`, not as an empty value
        type(None), lambda rep, _: rep.represent_scalar("tag:yaml.org,2002:null", "null")
    )
    for path in (recipe_path, params_path):
        if not path.is_file():
            raise ParamsError(f"{path}: not found")
    params = read_mapping(yaml, params_path)
    overrides = read_mapping(yaml, recipe_path)
    merged = merge(params, overrides)
    validate(merged, str(recipe_path))
    buffer = io.StringIO()
    yaml.dump(merged, buffer)
    if write:
        write_text_atomic(params_path, buffer.getvalue())
    return buffer.getvalue()


def read_mapping(yaml: YAML, path: Path) -> dict:
    """A YAML file whose top level is a mapping (an empty file is an empty one)."""
    try:
        loaded = yaml.load(path.read_text(encoding="utf-8"))
    except (YAMLError, UnicodeDecodeError) as exc:
        raise ParamsError(f"{path}: not valid YAML: {yaml_problem(exc)}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ParamsError(f"{path}: top level must be a mapping of stage names, found a {yaml_kind(loaded)}")
    return loaded


def _plain(node):
    """ruamel's commented maps/sequences as plain dicts/lists, for the typed config builder."""
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", type=Path)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--check", action="store_true", help="validate only; do not write params.yaml")
    args = parser.parse_args()
    apply_recipe(args.recipe, args.params, write=not args.check)
    print(f"recipe {args.recipe}: {'valid' if args.check else f'applied to {args.params}'}")


if __name__ == "__main__":
    run_stage(main)
