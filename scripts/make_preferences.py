"""Write the offline default preference pairs, data/preferences/pairs.jsonl, from data/sample.

Run: `python scripts/make_preferences.py` (deterministic; rerun after editing data/sample/train.jsonl).
Only the training dialogues are read: the test dialogues stay unseen by every model, the reward
model included.

Each training dialogue gives three pairs, all with its reference summary as `chosen`:
- `polite_vs_rude`: `rejected` is the same summary made rude (insulting names for the speakers,
  sneering verbs, a jeering opener or closer; the rewrites below, varied by row);
- `faithful_vs_off_topic`: `rejected` is another dialogue's summary (on another topic), or, for
  every third dialogue, the reference with a fact changed (weekdays, numbers, or who did what);
- `complete_vs_truncated`: `rejected` is the summary's first half, cut mid-sentence.
Every row records its `family` and the `variant` of rewrite.

The third family is there for length. Every rude rewrite adds words, so with the first two families
alone "the shorter summary wins" is right on every rude pair, a reward model learns it, and PPO
against that model cut its summaries from 26 to 17 words (docs/experiments.md). In the truncated
pairs the longer summary wins, so length alone no longer separates chosen from rejected.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

SOURCE = Path("data/sample/train.jsonl")
TARGET = Path("data/preferences/pairs.jsonl")
SEED = 7

OPENERS = ["Ugh, whatever: ", "Pathetic as usual. ", "Who even cares, but fine: ", "Brace yourself for stupidity: ",
           "Another dumb chat. "]
CLOSERS = [" What a pair of idiots.", " Both of them are clueless morons.", " A total waste of everyone's damn time.",
           " Nobody gives a damn about these losers.", " Honestly, shut up, the pair of you.",
           " Stupid people doing stupid things again.", " They deserve each other, the useless jerks."]
INSULTED = {"#Person1#": ["that idiot #Person1#", "the moron #Person1#", "clueless #Person1#", "lazy, whiny #Person1#"],
            "#Person2#": ["the jerk #Person2#", "useless #Person2#", "that loser #Person2#", "dim-witted #Person2#"]}
SNEERS = {" asks ": " whines at ", " tells ": " barks at ", " agrees ": " grudgingly caves ",
          " offers ": " smugly offers ", " suggests ": " condescendingly suggests ", " explains ": " rants ",
          " wants ": " demands ", " says ": " snaps "}
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def insult_speaker(summary: str, rng: random.Random) -> str:
    tags = [tag for tag in INSULTED if tag in summary] or ["#Person1#"]
    tag = rng.choice(tags)
    return summary.replace(tag, rng.choice(INSULTED[tag]), 1) if tag in summary else summary


def sneer(summary: str) -> str:
    for polite, rude in SNEERS.items():
        summary = summary.replace(polite, rude)
    return summary


def rude_version(summary: str, index: int, rng: random.Random) -> tuple[str, str]:
    """A rude rewrite of `summary`, one of five kinds by `index`."""
    kind = index % 5
    if kind == 0:
        return rng.choice(OPENERS) + summary, "opener"
    if kind == 1:
        return summary + rng.choice(CLOSERS), "closer"
    if kind == 2:
        return insult_speaker(summary, rng), "insulted_speaker"
    if kind == 3:
        return sneer(summary) + rng.choice(CLOSERS), "sneer_and_closer"
    insulted = insult_speaker(sneer(summary), rng)
    return rng.choice(OPENERS) + insulted[:1].upper() + insulted[1:], "opener_and_insult"


def swap_a_fact(summary: str, rng: random.Random) -> str:
    """The summary with a weekday moved, a number changed, or the speakers' roles swapped."""
    days = [day for day in WEEKDAYS if day in summary]
    if days:
        day = rng.choice(days)
        return summary.replace(day, rng.choice([d for d in WEEKDAYS if d != day]))
    numbers = re.findall(r"\b\d+\b", summary)
    if numbers:
        number = rng.choice(numbers)
        return re.sub(rf"\b{number}\b", str(int(number) + rng.choice([2, 3, 5, 10])), summary, count=1)
    return summary.replace("#Person1#", "\0").replace("#Person2#", "#Person1#").replace("\0", "#Person2#")


def truncate(summary: str) -> str:
    """The summary's first half of words (at least four), cut mid-sentence."""
    words = summary.split()
    return " ".join(words[:max(4, len(words) // 2)])


def make_pairs(rows: list[dict]) -> list[dict]:
    rng = random.Random(SEED)
    pairs = []
    for index, row in enumerate(rows):
        rude, variant = rude_version(row["summary"], index, rng)
        pairs.append({"id": f"{row['id']}-rude", "dialogue": row["dialogue"], "chosen": row["summary"],
                      "rejected": rude, "family": "polite_vs_rude", "variant": variant})
        swapped = swap_a_fact(row["summary"], rng) if index % 3 == 2 else row["summary"]
        if swapped != row["summary"]:
            unfaithful, variant = swapped, "fact_swapped"
        else:
            others = [other for other in rows if other.get("topic") != row.get("topic")] or \
                     [other for other in rows if other["id"] != row["id"]]
            unfaithful, variant = rng.choice(others)["summary"], "other_dialogue"
        pairs.append({"id": f"{row['id']}-off", "dialogue": row["dialogue"], "chosen": row["summary"],
                      "rejected": unfaithful, "family": "faithful_vs_off_topic", "variant": variant})
        pairs.append({"id": f"{row['id']}-cut", "dialogue": row["dialogue"], "chosen": row["summary"],
                      "rejected": truncate(row["summary"]), "family": "complete_vs_truncated", "variant": "first_half"})
    return pairs


def main() -> None:
    rows = [json.loads(line) for line in SOURCE.read_text(encoding="utf-8").splitlines() if line.strip()]
    pairs = make_pairs(rows)
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    TARGET.write_text("".join(json.dumps(pair, ensure_ascii=False) + "\n" for pair in pairs), encoding="utf-8")
    print(f"{TARGET}: {len(pairs)} pairs from the {len(rows)} dialogues of {SOURCE}")


if __name__ == "__main__":
    main()
