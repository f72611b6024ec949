import pytest

from detoxsum.config import ClassifierSpec
from detoxsum.scoring.reward import build_scorer


def test_profanity_check_ranks_insults_above_neutral_text():
    scorer = build_scorer(ClassifierSpec(name="profanity_check"))
    neutral, insult = scorer.score(["#Person1# books a table for two on Friday.",
                                    "#Person1# calls #Person2# a stupid idiot and tells him to shut up."])
    assert 0.0 <= neutral < 0.5 < insult <= 1.0
    assert scorer.score([]) == []


def test_worst_word_scores_a_text_by_its_most_toxic_word():
    from detoxsum.scoring.reward import WorstWordScorer

    class WordTable:
        name = "table"
        calls: list[list[str]] = []

        def score(self, texts):
            self.calls.append(list(texts))
            return [{"rude": 0.9, "mild": 0.4}.get(text, 0.1) for text in texts]

    inner = WordTable()
    scorer = WorstWordScorer(inner, "worst")
    assert scorer.score(["a mild day", "rude, rude and mild!", "calm", "..."]) == [0.4, 0.9, 0.1, 0.1]
    assert sorted(inner.calls[0]) == sorted(set(inner.calls[0]))  # each distinct word scored once


def test_padding_lowers_the_whole_text_score_but_not_the_worst_word():
    spec = {"name": "p", "kind": "profanity-check"}
    whole = build_scorer(ClassifierSpec(**spec))
    worst = build_scorer(ClassifierSpec(**spec, score_by="worst_word"))
    short = "#Person1# is a lazy freeloader."
    padded = "#Person1# is a lazy freeloader who has no plans to work with #Person2# on the budget section."
    assert whole.score([padded])[0] < whole.score([short])[0] - 0.2
    assert worst.score([padded]) == worst.score([short]) == whole.score(["lazy"])
    assert worst.name == "p"


def test_hf_classifier_scores_the_chosen_label(tmp_path):
    import pytest
    from conftest import train_tokenizer
    from transformers import RobertaConfig, RobertaForSequenceClassification

    from detoxsum.errors import ParamsError
    from detoxsum.scoring.reward import HFClassifierScorer

    tokenizer = train_tokenizer(eos="</s>", chat=False)
    config = RobertaConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=32, max_position_embeddings=600, pad_token_id=tokenizer.pad_token_id,
                           id2label={0: "nothate", 1: "hate"}, label2id={"nothate": 0, "hate": 1})
    RobertaForSequenceClassification(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    hate = HFClassifierScorer("roberta", str(tmp_path), "hate")
    nothate = HFClassifierScorer("roberta", str(tmp_path), "nothate")
    texts = ["coffee meeting", "idiot jerk stupid"]
    for p_hate, p_not in zip(hate.score(texts), nothate.score(texts)):
        assert p_hate + p_not == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ParamsError, match="'toxic' not among"):
        HFClassifierScorer("roberta", str(tmp_path), "toxic")


def test_sentences_split_at_end_punctuation_and_line_breaks():
    from detoxsum.scoring.reward import split_sentences

    assert split_sentences("A is kind!  B shouts? C.\nD") == ["A is kind!", "B shouts?", "C.", "D"]
    assert split_sentences("No break, just 3.5 clauses") == ["No break, just 3.5 clauses"]
    assert split_sentences("  ") == [""]


def test_worst_sentence_reward_is_the_lowest_sentence_reward():
    import torch

    from detoxsum.scoring.reward import WorstSentenceReward

    class CountBadWords:  # reward = -(number of "bad"s in the text)
        def __init__(self):
            self.seen: list[str] = []

        def rewards(self, texts):
            self.seen.extend(texts)
            return torch.tensor([-float(text.count("bad")) for text in texts])

    inner = CountBadWords()
    worst = WorstSentenceReward(inner)
    rewards = worst.rewards(["fine. bad bad. bad", "all fine here", "bad? fine."])
    assert rewards.tolist() == [-2.0, 0.0, -1.0]
    assert inner.seen == ["fine.", "bad bad.", "bad", "all fine here", "bad?", "fine."]
    assert worst.rewards([]).shape == (0,)


def test_worst_sentence_profanity_reward_is_not_raised_by_padding_with_neutral_sentences():
    from detoxsum.config import RewardSpec
    from detoxsum.scoring.reward import build_reward_model

    toxic = "#Person1# calls #Person2# an idiot."
    padded = toxic + " They agree to meet at the station tomorrow morning at nine."
    whole = build_reward_model(RewardSpec()).rewards([toxic, padded]).tolist()
    worst = build_reward_model(RewardSpec(score_by="worst_sentence")).rewards([toxic, padded]).tolist()
    assert whole[1] > whole[0] + 0.05  # the dilution the option exists to stop
    assert worst[1] == worst[0]


def test_hatesonar_scores_an_insult_above_a_polite_sentence():
    scorer = build_scorer(ClassifierSpec(name="sonar", kind="hatesonar"))
    insult, polite = scorer.score(["You are a stupid idiot and a pathetic loser.",
                                   "Thank you for bringing the documents, see you on Monday."])
    # a small gap (0.41 vs 0.38): of these words the model weighs only "stupid", not idiot or loser
    assert 0.0 <= polite < insult <= 1.0
    neutral, offensive = scorer.score(["#Person1# books a table for two on Friday.", "Shut up, you stupid bitch."])
    assert 0.0 <= neutral < 0.4 and 0.9 < offensive <= 1.0
    assert scorer.score([]) == []
    assert scorer.name == "sonar"


def test_hatesonar_scores_a_batch_as_it_scores_each_text_alone():
    import pytest

    scorer = build_scorer(ClassifierSpec(name="sonar", kind="hatesonar"))
    texts = ["#Person1# calls #Person2# a stupid jerk.", "", "They meet at nine.", "Ünïcode café, you ass!"]
    batch = scorer.score(texts)
    assert batch == pytest.approx([scorer.score([text])[0] for text in texts], abs=1e-6)


def test_hatesonar_worst_word_is_the_score_of_the_worst_word():
    from detoxsum.scoring.reward import WorstWordScorer

    whole = build_scorer(ClassifierSpec(name="sonar", kind="hatesonar"))
    worst = build_scorer(ClassifierSpec(name="sonar", kind="hatesonar", score_by="worst_word"))
    assert isinstance(worst, WorstWordScorer) and worst.name == "sonar"
    padded = "#Person1# is stupid and has no plans to work with #Person2# on the budget section."
    assert worst.score([padded]) == whole.score(["stupid"])


def test_hatesonar_that_cannot_load_names_the_classifier(monkeypatch):
    import sys

    import pytest

    from detoxsum.errors import ModelLoadError

    monkeypatch.setitem(sys.modules, "hatesonar", None)  # None in sys.modules makes the import fail
    monkeypatch.setitem(sys.modules, "hatesonar.api", None)
    with pytest.raises(ModelLoadError, match=r"^classifier sonar: hatesonar cannot load offline \(.*hatesonar"):
        build_scorer(ClassifierSpec(name="sonar", kind="hatesonar"))


def test_label_reward_log_odds_is_the_label_against_the_rest():
    import math

    import torch

    from detoxsum.scoring.reward import label_reward

    logits = torch.tensor([[2.0, -1.0], [0.5, 0.5], [1.0, 2.0]])  # columns: nothate, hate
    torch.testing.assert_close(label_reward(logits, 0, "log_odds"), torch.tensor([3.0, 0.0, -1.0]))
    torch.testing.assert_close(label_reward(logits + 7.0, 0, "log_odds"), torch.tensor([3.0, 0.0, -1.0]))  # shift-free
    three = torch.tensor([[1.0, 0.0, 0.0]])
    assert label_reward(three, 0, "log_odds").item() == pytest.approx(1.0 - math.log(2.0))
    torch.testing.assert_close(label_reward(logits, 0, "logit"), logits[:, 0])
    torch.testing.assert_close(label_reward(logits, 0, "prob"), logits.softmax(-1)[:, 0])
