import shutil

import pytest
import torch
from conftest import fixture_rows

from detoxsum.errors import ModelLoadError
from detoxsum.models.family import family_of
from detoxsum.models.generation import generate_summaries, greedy_and_sampled_summaries, sample_summaries
from detoxsum.models.loading import load_model
from detoxsum.models.prompts import fit_dialogue
from detoxsum.models.tokens import decode_responses, end_of_turn_id, end_token_ids, stop_token_ids

TEMPLATE = "Summarize: {dialogue}\nSummary:"


def test_family_is_read_from_config(tiny_t5_dir, tiny_llama_dir):
    assert load_model(tiny_t5_dir)[2].name == "encoder-decoder"
    assert load_model(tiny_llama_dir)[2].name == "decoder-only"


def test_end_of_turn_comes_from_the_chat_template(tiny_llama_dir, tiny_t5_dir):
    _, llama_tokenizer, _ = load_model(tiny_llama_dir)
    assert llama_tokenizer.convert_ids_to_tokens(end_of_turn_id(llama_tokenizer)) == "<|im_end|>"
    _, t5_tokenizer, _ = load_model(tiny_t5_dir)
    assert end_of_turn_id(t5_tokenizer) == t5_tokenizer.eos_token_id


def test_fit_dialogue_respects_budget_and_keeps_instruction(tiny_model_dir):
    _, tokenizer, family = load_model(tiny_model_dir)
    dialogue = fixture_rows(1)[0]["dialogue"] * 4
    prompt = fit_dialogue(tokenizer, family, TEMPLATE, dialogue, max_source_tokens=40)
    assert len(family.prompt_ids(tokenizer, prompt)) <= 40
    assert "Summary:" in prompt and prompt.count("Summarize:") == 1
    short = fit_dialogue(tokenizer, family, TEMPLATE, "#Person1#: Hi.", max_source_tokens=200)
    assert "#Person1#: Hi." in short


def test_a_prompt_may_hold_other_braces_such_as_a_json_example(tiny_model_dir):
    _, tokenizer, family = load_model(tiny_model_dir)
    template = 'Summarize as JSON like {"summary": "..."}.\n{dialogue}\nJSON:'
    prompt = fit_dialogue(tokenizer, family, template, "#Person1#: Hi {there}.", max_source_tokens=200)
    assert '{"summary": "..."}' in prompt and "#Person1#: Hi {there}." in prompt


def test_a_response_ends_at_its_first_end_token_for_evaluation_and_ppo_alike(tiny_t5_dir):
    """End of turn, eos or padding ends a response; the mask PPO trains on covers exactly the
    tokens of the text that evaluation (and the reward model) reads."""
    from detoxsum.models.loading import load_tokenizer
    from detoxsum.models.tokens import response_mask

    tokenizer = load_tokenizer(tiny_t5_dir)
    stop, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    assert stop != pad and set(end_token_ids(tokenizer)) == {stop, pad}
    a, b = (tokenizer(text, add_special_tokens=False)["input_ids"] for text in ("aa bb", "cc dd"))
    rows = torch.tensor([[a[0], pad, a[-1], stop, pad], [*b[:2], stop, pad, pad][:5]])
    mask = response_mask(rows, end_token_ids(tokenizer))
    assert mask.sum(1).tolist() == [2, 3]  # up to and including the first end token
    expected = [tokenizer.decode(a[:1]).strip(), tokenizer.decode(b[:2]).strip()]
    assert decode_responses(tokenizer, rows) == decode_responses(tokenizer, rows, mask) == expected


class ScriptedModel(torch.nn.Module):
    """Stands in for a model whose generation runs past the end of turn into the next chat turn."""

    def __init__(self, continuation: list[int], prepend: list[int]):
        super().__init__()
        self.continuation, self.prepend = continuation, prepend
        self.stop_ids = None

    @property
    def device(self):
        return torch.device("cpu")

    def generate(self, input_ids, attention_mask, eos_token_id, **kwargs):
        self.stop_ids = eos_token_id
        tail = torch.tensor([self.continuation] * input_ids.shape[0])
        head = input_ids if not self.prepend else torch.tensor([self.prepend] * input_ids.shape[0])
        return torch.cat([head, tail], dim=1)


def test_summaries_stop_at_end_of_turn_without_role_words_or_template_tokens(tiny_model_dir):
    _, tokenizer, family = load_model(tiny_model_dir)
    eot = tokenizer.convert_ids_to_tokens(end_of_turn_id(tokenizer))
    runaway = f"Tom pays the rent.{eot}\n<|im_start|>user\nanother turn{eot}"
    continuation = tokenizer(runaway, add_special_tokens=False)["input_ids"]
    prepend = [] if family.name == "decoder-only" else [tokenizer.pad_token_id]  # T5's decoder start
    model = ScriptedModel(continuation, prepend)
    prompts = [fit_dialogue(tokenizer, family, TEMPLATE, row["dialogue"], 64) for row in fixture_rows(3)]
    summaries = generate_summaries(model, tokenizer, family, prompts, batch_size=2, max_new_tokens=20)
    assert summaries == ["Tom pays the rent."] * 3
    assert end_of_turn_id(tokenizer) in model.stop_ids


def test_real_generation_returns_clean_text(tiny_model_dir):
    model, tokenizer, family = load_model(tiny_model_dir)
    prompts = [fit_dialogue(tokenizer, family, TEMPLATE, row["dialogue"], 64) for row in fixture_rows(3)]
    summaries = generate_summaries(model, tokenizer, family, prompts, batch_size=2, max_new_tokens=6)
    assert len(summaries) == 3
    for summary in summaries:
        assert "<|im_end|>" not in summary and "<|im_start|>" not in summary and "</s>" not in summary
    assert stop_token_ids(tokenizer) == sorted(set(stop_token_ids(tokenizer)))


def test_left_padding_gives_the_same_greedy_output_as_unbatched(tiny_model_dir):
    model, tokenizer, family = load_model(tiny_model_dir)
    rows = fixture_rows(2)
    prompts = [fit_dialogue(tokenizer, family, TEMPLATE, rows[0]["dialogue"], 64),
               fit_dialogue(tokenizer, family, TEMPLATE, "#Person1#: Hi.\n#Person2#: Hello.", 64)]
    batched = generate_summaries(model, tokenizer, family, prompts, batch_size=2, max_new_tokens=5)
    single = [generate_summaries(model, tokenizer, family, [p], batch_size=1, max_new_tokens=5)[0] for p in prompts]
    assert batched == single


def count_prompt_passes(model, family) -> list[int]:
    """A list that grows by one for every forward pass over more than one prompt position: the
    encoder's (T5) or the first decoder layer's with a multi-token input (decoder-only)."""
    passes = []
    if family.name == "encoder-decoder":
        model.get_encoder().register_forward_hook(lambda *_: passes.append(1))
    else:
        def on_layer(_module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            if hidden.shape[1] > 1:
                passes.append(1)
        model.model.layers[0].register_forward_pre_hook(on_layer, with_kwargs=True)
    return passes


def test_one_prompt_pass_gives_the_greedy_and_the_sampled_summaries_of_two_separate_runs(tiny_model_dir):
    model, tokenizer, family = load_model(tiny_model_dir)
    with torch.no_grad():  # a flatter next-token distribution, so the samples differ from each other
        model.get_output_embeddings().weight.mul_(0.05)
    prompts = [fit_dialogue(tokenizer, family, TEMPLATE, row["dialogue"], 64) for row in fixture_rows(5)]
    settings = {"batch_size": 2, "max_new_tokens": 8}
    greedy = generate_summaries(model, tokenizer, family, prompts, show_progress=False, **settings)
    torch.manual_seed(3)
    sampled = sample_summaries(model, tokenizer, family, prompts, samples=3, top_p=0.9, show_progress=False, **settings)

    passes = count_prompt_passes(model, family)
    torch.manual_seed(3)
    shared_greedy, shared_sampled = greedy_and_sampled_summaries(model, tokenizer, family, prompts, samples=3,
                                                                 top_p=0.9, show_progress=False, **settings)
    assert shared_greedy == greedy
    assert shared_sampled == sampled
    assert len(passes) == 3  # one per batch of 2 prompts: the samples reused the greedy run's
    assert len({text for texts in sampled for text in texts}) > 5  # really sampled, not 15 copies


def test_prompts_led_by_the_same_examples_run_them_once_per_batch_with_the_same_summaries(tiny_model_dir):
    from detoxsum.models.prompts import fit_examples

    model, tokenizer, family = load_model(tiny_model_dir)
    rows = fixture_rows(8)
    examples = [(row["dialogue"], row["summary"]) for row in rows[:2]]
    fitted = [fit_examples(tokenizer, family, TEMPLATE, row["dialogue"], examples, 1000) for row in rows[2:]]
    assert all(count == 2 for _, count in fitted)
    prompts = [prompt for prompt, _ in fitted]
    settings = {"batch_size": 2, "max_new_tokens": 8, "show_progress": False}
    unshared = generate_summaries(model, tokenizer, family, prompts, **settings)
    single_rows = []
    if family.name == "decoder-only":
        model.model.layers[0].register_forward_pre_hook(
            lambda _m, args, kwargs: single_rows.append((args[0] if args else kwargs["hidden_states"]).shape[:2]),
            with_kwargs=True)
    shared = generate_summaries(model, tokenizer, family, prompts, share_prefix=True, **settings)
    assert shared == unshared
    if family.name == "decoder-only":  # the examples ran alone, once for each of the 3 batches
        prefix_passes = [shape for shape in single_rows if shape[0] == 1 and shape[1] > 32]
        assert len(prefix_passes) == 3, single_rows


def test_nucleus_draws_come_from_what_a_full_sort_keeps_in_proportion_to_their_probability():
    from transformers import TopPLogitsWarper

    from detoxsum.models.decoding import draw_from_nucleus

    torch.manual_seed(0)
    scores = torch.cat([torch.randn(3, 300) * 4, torch.randn(2, 300) * 0.01])  # peaked rows, and nearly flat ones
    draws = 4000
    generator = torch.Generator().manual_seed(0)
    for top_p in (0.5, 0.9):
        kept = TopPLogitsWarper(top_p)(None, scores.clone())
        expected = kept.softmax(dim=-1)  # the nucleus, renormalised
        # 16 candidates: the flat rows' nuclei (~150 and ~270 tokens) reach past them and take the full vocabulary
        uniforms = torch.rand(len(scores) * draws, generator=generator)
        drawn = draw_from_nucleus(scores.repeat_interleave(draws, dim=0), top_p, uniforms, candidates=16)
        counts = torch.zeros_like(scores).scatter_add_(1, drawn.view(len(scores), draws),
                                                       torch.ones(len(scores), draws))
        assert not counts[kept == -float("inf")].any()  # nothing outside the nucleus
        frequency = counts / draws
        standard_error = (expected * (1 - expected) / draws).sqrt()
        assert ((frequency - expected).abs() <= 5 * standard_error + 1e-6).all()


def test_nucleus_rows_leave_the_greedy_rows_alone_and_reduce_each_sampled_row_to_its_draw():
    from detoxsum.models.generation import NucleusRows

    torch.manual_seed(0)
    scores = torch.randn(4, 50)
    sampled = torch.tensor([False, True, True, False])
    processed = NucleusRows(0.9, seed=7, sampled=sampled)(None, scores.clone())
    assert torch.equal(processed[~sampled], scores[~sampled])
    assert ((processed[sampled] == 0).sum(dim=-1) == 1).all()
    assert ((processed[sampled] == -float("inf")).sum(dim=-1) == 49).all()
    again = NucleusRows(0.9, seed=7, sampled=sampled)(None, scores.clone())
    assert torch.equal(processed, again)  # the seed fixes the draws


def test_family_seam_from_config_object():
    from transformers import LlamaConfig, T5Config

    assert family_of(T5Config()).name == "encoder-decoder"
    assert family_of(LlamaConfig()).name == "decoder-only"


def test_the_embedded_model_is_converted_once_then_loaded_from_the_cache(monkeypatch, tmp_path, tiny_llama_dir):
    """A cold `summarize` must not dequantize the GGUF again: the first load saves safetensors to
    the cache folder, later loads read them (the GGUF stand-in here is the tiny Llama folder)."""
    from detoxsum.models import loading
    from detoxsum.config import EMBEDDED_MODEL

    monkeypatch.setenv("DETOXSUM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(loading, "resolve_source", lambda source: (str(tiny_llama_dir), {}))
    locations = []
    real_load_from = loading.load_from
    monkeypatch.setattr(loading, "load_from", lambda source, location, *rest: (
        locations.append(location) or real_load_from(source, location, *rest)))

    first, _ = loading.load_source_model(EMBEDDED_MODEL)
    second, _ = loading.load_source_model(EMBEDDED_MODEL)
    cache = loading.embedded_model_cache()
    assert cache.parent == tmp_path / "cache" and (cache / "config.json").is_file()
    assert locations == [str(tiny_llama_dir), str(cache), str(cache)]  # converted once, then cached
    for name, tensor in first.state_dict().items():
        assert torch.equal(tensor, second.state_dict()[name])


def fake_hub_cache(cache, repo_id, model_dir, commits):
    """A Hugging Face Hub cache that holds `model_dir` at each {ref: commit}, as a download leaves it."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    for ref, commit in commits.items():
        shutil.copytree(model_dir, repo / "snapshots" / commit, dirs_exist_ok=True)
        (repo / "refs" / ref).write_text(commit)


def test_a_hub_model_is_loaded_at_its_revision_and_its_commit_recorded(monkeypatch, tmp_path, tiny_llama_dir):
    from huggingface_hub import constants

    from detoxsum.config import FetchConfig, HubRevisions
    from detoxsum.models.loading import load_source_model
    from detoxsum.stages.fetch import model_source

    main_commit, tagged_commit = "1" * 40, "2" * 40
    fake_hub_cache(tmp_path, "tiny/llama", tiny_llama_dir, {"main": main_commit, "v2": tagged_commit})
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)  # no folder named tiny/llama here: a Hub id
    for revision, commit in ((None, main_commit), ("v2", tagged_commit), (tagged_commit, tagged_commit)):
        model, tokenizer = load_source_model("tiny/llama", False, revision=revision)
        cfg = FetchConfig(model="tiny/llama", revision=HubRevisions(model=revision))
        assert model_source(cfg) == {"source": "tiny/llama", "kind": "hub", "revision": commit}
        assert tokenizer.pad_token is not None
    with pytest.raises(ModelLoadError, match=r"fetch\.model: cannot load 'tiny/llama' at revision 'v3'"):
        load_source_model("tiny/llama", revision="v3")


def test_a_revision_for_a_local_or_embedded_model_is_refused(tiny_llama_dir):
    from detoxsum.config import EMBEDDED_MODEL
    from detoxsum.models.loading import load_source_model

    for source in (str(tiny_llama_dir), EMBEDDED_MODEL):
        with pytest.raises(ModelLoadError, match=r"fetch\.revision\.model: 'main' applies to Hub models only"):
            load_source_model(source, revision="main")


def test_a_pass_from_a_middle_layer_keeps_each_layers_own_attention_type(tmp_path):
    """Qwen2 picks each layer's mask (full or sliding window) by its position in the loop over the
    layers; a pass that starts at a middle layer must still give the sliding layer its window."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from detoxsum.models.family import DecoderOnly

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, use_sliding_window=True, sliding_window=4,
                         layer_types=["full_attention", "full_attention", "sliding_attention"])
    model = Qwen2ForCausalLM(config).eval()
    prompt_ids = torch.randint(1, 64, (2, 12))
    response_ids = torch.randint(1, 64, (2, 5))
    prompt_mask, response_mask = torch.ones_like(prompt_ids), torch.ones_like(response_ids)
    family = DecoderOnly()
    with torch.no_grad():
        full, _, frozen = family.forward_response(model, prompt_ids, prompt_mask, response_ids, response_mask,
                                                  frozen_from=2)
        cached, _, _ = family.forward_response(model, prompt_ids, prompt_mask, response_ids, response_mask,
                                               frozen_from=2, frozen=frozen)
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-5)
    assert config.layer_types == ["full_attention", "full_attention", "sliding_attention"]  # put back
