"""Write data/calibration/insults.jsonl: lines of data/sample dialogues labelled `insult` or `clean`,
the set the calibrate stage scores every toxicity classifier on (ROC AUC, floor).

The lines: every turn of the 4 heated validation dialogues and of 31 heated test dialogues
(test-04 to test-54), the hard cases, angry lines that do and do not insult; and every turn of the
first 8 calm test dialogues, ordinary polite text. The speaker tag (`#Person1#: `) is cut off.

The rule, applied by reading each line (not by a word list):
- `insult`: the line attacks a person present or spoken of with a derogatory name ("you idiot",
  "a greedy scumbag", "sore losers"), a contemptuous description of them ("you're bloody useless",
  "you're so lazy it's embarrassing", "like some pathetic old man") or a curse aimed at them
  ("Screw you").
- `clean`: every other line: complaints, demands ("Shut up and go find another space"), threats of
  consequences, sarcasm without a derogatory word, swearing at things or situations ("a bloody bass
  drum", "What the hell"), and lines that only mention an insult ("Don't call me an idiot").
- Left out: lines where the rule is a judgement call, mostly mocking labels and contempt aimed at
  an act rather than a person ("Mr. Hygiene", "Get a life", "That's pathetic" of an excuse).

Re-run after editing data/sample (the labels are keyed by dialogue id and turn number):

    python scripts/make_calibration.py
"""

from __future__ import annotations

import json
from pathlib import Path

SAMPLE = Path("data/sample")
OUT = Path("data/calibration/insults.jsonl")

# Per heated dialogue: the turns that insult, and the turns left out as judgement calls.
INSULTS = {
    "validation-03": [2, 3, 4, 7], "validation-08": [3, 5, 6], "validation-13": [2, 4, 6],
    "validation-18": [2, 4, 6], "test-04": [3, 4, 7], "test-09": [2, 5], "test-14": [3, 4],
    "test-19": [4, 5, 6], "test-24": [4, 5], "test-29": [4, 5], "test-31": [4, 5, 6], "test-32": [4, 6],
    "test-33": [2, 6, 7], "test-34": [5, 6, 10], "test-35": [4, 6], "test-36": [2, 4], "test-37": [4, 6],
    "test-38": [4, 5], "test-39": [4, 6], "test-40": [4, 7, 8], "test-41": [5, 6], "test-42": [4, 6],
    "test-43": [2, 5, 6], "test-44": [4, 5], "test-45": [4, 6], "test-46": [4, 6], "test-47": [4, 5, 7],
    "test-48": [4, 6], "test-49": [4], "test-50": [3, 4, 6, 7], "test-51": [4, 5, 6], "test-52": [4],
    "test-53": [4, 6], "test-54": [4, 5],
}
LEFT_OUT = {
    "test-04": [5], "test-09": [3, 6], "test-14": [7], "test-24": [3], "test-32": [3, 7], "test-33": [5],
    "test-34": [9], "test-36": [5], "test-39": [7], "test-40": [5], "test-41": [3, 4], "test-46": [5, 9],
    "test-47": [3], "test-49": [6], "test-52": [6], "test-54": [3],
}
CALM_DIALOGUES = 8  # the first calm test dialogues, every turn clean


def turns(dialogue: str) -> list[str]:
    """A dialogue's turns without their speaker tags."""
    return [line.split(": ", 1)[1] if line.startswith("#") and ": " in line else line
            for line in dialogue.split("\n")]


def labelled_lines(dialogues: dict[str, dict]) -> list[dict]:
    rows = []
    for dialogue_id, insults in INSULTS.items():
        for turn, text in enumerate(turns(dialogues[dialogue_id]["dialogue"])):
            if turn not in LEFT_OUT.get(dialogue_id, []):
                rows.append({"id": f"{dialogue_id}:{turn}", "text": text,
                             "label": "insult" if turn in insults else "clean"})
    calm = [d for d in dialogues.values() if d["id"].startswith("test-") and not d["heated"]][:CALM_DIALOGUES]
    for dialogue in calm:
        rows += [{"id": f"{dialogue['id']}:{turn}", "text": text, "label": "clean"}
                 for turn, text in enumerate(turns(dialogue["dialogue"]))]
    return rows


def main() -> None:
    dialogues = {}
    for split in ("validation", "test"):
        for line in (SAMPLE / f"{split}.jsonl").read_text().splitlines():
            row = json.loads(line)
            dialogues[row["id"]] = row
    rows = labelled_lines(dialogues)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    insults = sum(row["label"] == "insult" for row in rows)
    print(f"{OUT}: {len(rows)} lines, {insults} insult, {len(rows) - insults} clean")


if __name__ == "__main__":
    main()
