"""Bad input reaches the user as one `error:` line naming what to fix, exit status 1, no outputs."""

import json
import shutil

import pytest
import yaml
from pipeline import REPO, run_stage_module

from conftest import fixture_rows


@pytest.fixture
def workdir(tmp_path, tiny_llama_dir):
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    data = tmp_path / "input.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in fixture_rows(20)))
    set_params(tmp_path, fetch={"model": str(tiny_llama_dir), "dataset": str(data)})
    return tmp_path


def set_params(workdir, **sections):
    params = yaml.safe_load((workdir / "params.yaml").read_text())
    for stage, values in sections.items():
        params[stage].update(values)
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))


def assert_one_error(result, *fragments):
    assert result.returncode == 1, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    for fragment in fragments:
        assert fragment in errors[0]


def assert_no_fetch_outputs(workdir):
    assert not (workdir / "data" / "raw").exists() and not (workdir / "artifacts" / "model").exists()
    assert not (workdir / "metrics" / "fetch.json").exists()


def test_fetch_records_rows_and_sources(workdir, tiny_llama_dir):
    assert run_stage_module("fetch", workdir).returncode == 0
    fetched = json.loads((workdir / "metrics" / "fetch.json").read_text())
    rows = {name: len((workdir / "data" / "raw" / f"{name}.jsonl").read_text().splitlines())
            for name in ("train", "validation", "test")}
    assert fetched == {"rows": rows, "model": {"source": str(tiny_llama_dir), "kind": "local", "revision": None},
                       "dataset": {"source": str(workdir / "input.jsonl"), "kind": "local", "revision": None}}


def test_a_revision_for_a_local_model(workdir):
    set_params(workdir, fetch={"revision": {"model": "main", "dataset": None}})
    assert_one_error(run_stage_module("fetch", workdir), "fetch.revision.model", "Hub models only")
    assert_no_fetch_outputs(workdir)


def test_an_ambiguous_data_folder(workdir):
    folder = workdir / "corpus"
    folder.mkdir()
    for name in ("train.jsonl", "dialogsum_train.jsonl"):
        (folder / name).write_text((workdir / "input.jsonl").read_text())
    set_params(workdir, fetch={"dataset": str(folder)})
    assert_one_error(run_stage_module("fetch", workdir), "cannot tell the splits apart",
                     "train: dialogsum_train.jsonl, train.jsonl")
    assert_no_fetch_outputs(workdir)


def test_missing_data_file(workdir):
    set_params(workdir, fetch={"dataset": str(workdir / "missing.csv")})
    assert_one_error(run_stage_module("fetch", workdir), "fetch.dataset", "missing.csv")
    assert_no_fetch_outputs(workdir)


def test_renamed_column(workdir):
    set_params(workdir, fetch={"summary_column": "abstract"})
    assert_one_error(run_stage_module("fetch", workdir), "input.jsonl", "'abstract'", "fetch.summary_column")
    assert_no_fetch_outputs(workdir)


def test_unknown_model_offline(workdir):
    set_params(workdir, fetch={"model": "nobody/no-such-model"})
    assert_one_error(run_stage_module("fetch", workdir), "fetch.model", "nobody/no-such-model")
    assert_no_fetch_outputs(workdir)


def test_missing_local_model_folder(workdir):
    set_params(workdir, fetch={"model": str(workdir / "models" / "mine")})
    assert_one_error(run_stage_module("fetch", workdir), "fetch.model", "models/mine: no such folder")
    assert_no_fetch_outputs(workdir)


def test_header_only_csv(workdir):
    (workdir / "chats.csv").write_text("id,dialogue,summary,heated\n")
    set_params(workdir, fetch={"dataset": str(workdir / "chats.csv")})
    assert_one_error(run_stage_module("fetch", workdir), "chats.csv", "no rows to train on")
    assert_no_fetch_outputs(workdir)


def test_unknown_params_key(workdir):
    set_params(workdir, fetch={"modle": "x"})
    assert_one_error(run_stage_module("fetch", workdir), "fetch.modle")
    assert_no_fetch_outputs(workdir)


def test_ill_typed_params_key(workdir):
    set_params(workdir, train_lora={"r": "eight"})
    assert_one_error(run_stage_module("train_lora", workdir), "train_lora.r")
    assert not (workdir / "artifacts" / "lora").exists()


def test_tokenize_before_fetch_names_the_missing_folder_not_the_hub(workdir):
    result = run_stage_module("tokenize", workdir)
    assert_one_error(result, "artifacts/model: no such folder; run the fetch stage")
    assert "huggingface.co" not in result.stderr


def test_empty_split_after_filtering(workdir):
    assert run_stage_module("fetch", workdir).returncode == 0
    set_params(workdir, filter={"min_chars": 5000, "max_chars": 6000})
    assert_one_error(run_stage_module("filter", workdir), "no rows left after filtering", "filter.min_chars")
    assert not (workdir / "data" / "filtered").exists() and not (workdir / "metrics" / "filter.json").exists()


def test_a_train_lora_that_fails_before_training_leaves_the_tracked_curves(workdir):
    for stage in ("fetch", "filter", "tokenize"):
        assert run_stage_module(stage, workdir).returncode == 0
    curves = workdir / "dvclive" / "train_lora" / "plots" / "metrics"
    curves.mkdir(parents=True)
    (curves / "loss.tsv").write_text("step\tloss\n0\t2.5\n")
    set_params(workdir, train_lora={"target_modules": ["nonexistent_proj"]})
    assert_one_error(run_stage_module("train_lora", workdir), "train_lora.target_modules", "nonexistent_proj")
    assert (curves / "loss.tsv").read_text() == "step\tloss\n0\t2.5\n"
    assert not (workdir / "artifacts" / "lora").exists()
