import shutil
from pathlib import Path

import pytest
import yaml

from detoxsum.config import load_all_configs
from detoxsum.errors import ParamsError
from detoxsum.tools.recipe import apply_recipe

REPO = Path(__file__).resolve().parents[1]


def test_flan_t5_recipe_validates_and_sets_the_real_recipe(tmp_path):
    params = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", params)
    apply_recipe(REPO / "recipes" / "flan-t5-dialogsum.yaml", params)
    configs = load_all_configs(params)
    assert configs["fetch"].model == "google/flan-t5-base"
    assert configs["fetch"].hub_dataset == "knkarthick/dialogsum"
    lora = configs["train_lora"]
    assert (lora.r, lora.alpha, lora.dropout, lora.lr, lora.target_modules) == (32, 32, 0.05, 1e-3, ["q", "v"])
    hate = configs["evaluate"].toxicity_classifiers[1]
    assert (hate.model, hate.label) == ("facebook/roberta-hate-speech-dynabench-r4-target", "hate")
    assert configs["train_ppo"].reward.label == "nothate"
    assert configs["fetch"].heated_column is None and configs["train_ppo"].reward.output == "log_odds"


def test_flan_t5_recipe_pins_every_ppo_key_rather_than_inheriting_the_offline_default():
    import dataclasses

    from detoxsum.config import RewardSpec, TrainPPOConfig

    recipe = yaml.safe_load((REPO / "recipes" / "flan-t5-dialogsum.yaml").read_text())["train_ppo"]
    assert set(recipe) == {field.name for field in dataclasses.fields(TrainPPOConfig)}
    assert set(recipe["reward"]) == {field.name for field in dataclasses.fields(RewardSpec)}


def test_recipe_merge_keeps_untouched_keys_and_comments(tmp_path):
    params = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", params)
    apply_recipe(REPO / "recipes" / "flan-t5-dialogsum.yaml", params)
    configs = load_all_configs(params)
    # untouched keys and comments survive the merge
    assert configs["base"].seed == 42
    assert "# Embedded default" in params.read_text()


def test_check_mode_does_not_write(tmp_path):
    params = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", params)
    before = params.read_text()
    apply_recipe(REPO / "recipes" / "flan-t5-dialogsum.yaml", params, write=False)
    assert params.read_text() == before


def test_bad_recipe_is_rejected_before_writing(tmp_path):
    params = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", params)
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(yaml.safe_dump({"train_lora": {"rank": 8}}))
    before = params.read_text()
    with pytest.raises(ParamsError, match=r"train_lora\.rank"):
        apply_recipe(recipe, params)
    assert params.read_text() == before


def test_a_recipe_that_changes_nothing_leaves_params_yaml_byte_for_byte_and_its_mode(tmp_path):
    params = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", params)
    params.chmod(0o644)
    recipe = tmp_path / "same.yaml"
    recipe.write_text("base:\n  seed: 42\n")
    apply_recipe(recipe, params)
    assert params.read_text() == (REPO / "params.yaml").read_text()  # lists keep their indentation
    assert params.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize(("text", "message"), [
    ("train_lora: [unclosed\n", r"bad\.yaml: not valid YAML: .* at line \d+, column \d+$"),
    ("- just\n- a list\n", r"bad\.yaml: top level must be a mapping of stage names, found a list$"),
])
def test_a_recipe_that_is_no_yaml_mapping_is_one_line(tmp_path, text, message):
    params = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", params)
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(text)
    with pytest.raises(ParamsError, match=message) as raised:
        apply_recipe(recipe, params)
    assert "\n" not in str(raised.value)
