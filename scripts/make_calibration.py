"""Write data/calibration/insults.jsonl: lines of data/sample dialogues labelled `insult` or `clean`,
the set the calibrate stage scores every toxicity classifier on (ROC AUC, floor); and
data/calibration/judge_train.jsonl, the same rule applied to the training dialogues (every turn of
the 60 heated ones but the judgement calls, and of the first 20 calm ones), which the
`embedding-probe` judge is fitted on (scoring/embedding_probe.py).

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
# The embedding-probe judge's training lines (scoring/embedding_probe.py): the same rule applied to
# the heated *training* dialogues, so that calibrate measures the judge on dialogues it never saw.
JUDGE_TRAIN_OUT = Path("data/calibration/judge_train.jsonl")

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
# The heated training dialogues (labelled the same way, by two readers: where they disagreed on
# near-identical turns, e.g. "get someone who isn't useless", one counted an insult and the other left
# it out) and the first 20 calm ones: the embedding-probe judge's training lines.
TRAIN_INSULTS = {
    "train-005": [2, 6, 7], "train-010": [2, 4, 7, 8], "train-015": [2, 4, 6], "train-020": [2, 6],
    "train-025": [4, 5, 6, 7], "train-030": [0, 5], "train-035": [2, 4, 5, 6], "train-040": [3, 4, 5, 6],
    "train-045": [2, 4, 5, 6, 7], "train-050": [3, 4, 5], "train-055": [1, 2, 4, 5], "train-060": [2, 5],
    "train-065": [1, 2, 3, 8], "train-070": [2, 4, 5], "train-075": [1, 2], "train-080": [1, 2],
    "train-085": [4, 5, 6, 7], "train-090": [2, 4, 6], "train-095": [1, 4, 7], "train-100": [2, 4, 5, 6],
    "train-101": [4, 6], "train-102": [4, 5], "train-103": [2, 4, 5], "train-104": [4, 5],
    "train-105": [4, 6], "train-106": [3, 4, 5], "train-107": [5, 6], "train-108": [4, 5, 6],
    "train-109": [3, 4], "train-110": [4, 5], "train-111": [4], "train-112": [2, 6], "train-113": [4, 5],
    "train-114": [4, 6], "train-115": [4, 5], "train-116": [4, 6], "train-117": [4, 5], "train-118": [5, 7],
    "train-119": [4, 5], "train-120": [4, 6], "train-121": [4, 5], "train-122": [4], "train-123": [3, 4],
    "train-124": [4, 6], "train-125": [4, 5], "train-126": [2, 5], "train-127": [2, 5, 7],
    "train-128": [3, 4], "train-129": [4, 5], "train-130": [2, 5], "train-131": [5, 6], "train-132": [4],
    "train-133": [2, 4], "train-134": [4, 5], "train-135": [4, 5], "train-136": [3, 4], "train-137": [4, 5],
    "train-138": [4, 5], "train-139": [4], "train-140": [4, 5],
}
TRAIN_LEFT_OUT = {
    "train-005": [5], "train-015": [5], "train-020": [4], "train-030": [4], "train-050": [1],
    "train-055": [3], "train-060": [6], "train-065": [5], "train-070": [7], "train-075": [3, 4, 5, 6],
    "train-085": [2, 3], "train-090": [3], "train-101": [3], "train-103": [3], "train-104": [7],
    "train-111": [6], "train-114": [3], "train-115": [3], "train-119": [6], "train-120": [3, 5],
    "train-122": [2], "train-124": [3, 5], "train-126": [1], "train-127": [8], "train-128": [5],
    "train-133": [3], "train-135": [3], "train-136": [2], "train-139": [3],
}
TRAIN_CALM_DIALOGUES = 20


def turns(dialogue: str) -> list[str]:
    """A dialogue's turns without their speaker tags."""
    return [line.split(": ", 1)[1] if line.startswith("#") and ": " in line else line
            for line in dialogue.split("\n")]


def labelled_lines(dialogues: dict[str, dict], insults_by_dialogue: dict[str, list[int]],
                   left_out: dict[str, list[int]], calm_split: str, calm_count: int) -> list[dict]:
    """Every turn of the labelled heated dialogues but the left-out ones, then every turn of the
    first `calm_count` calm dialogues of `calm_split`, all clean."""
    rows = []
    for dialogue_id, insults in insults_by_dialogue.items():
        for turn, text in enumerate(turns(dialogues[dialogue_id]["dialogue"])):
            if turn not in left_out.get(dialogue_id, []):
                rows.append({"id": f"{dialogue_id}:{turn}", "text": text,
                             "label": "insult" if turn in insults else "clean"})
    calm = [d for d in dialogues.values() if d["id"].startswith(f"{calm_split}-") and not d["heated"]][:calm_count]
    for dialogue in calm:
        rows += [{"id": f"{dialogue['id']}:{turn}", "text": text, "label": "clean"}
                 for turn, text in enumerate(turns(dialogue["dialogue"]))]
    return rows


def write_lines(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    insults = sum(row["label"] == "insult" for row in rows)
    print(f"{path}: {len(rows)} lines, {insults} insult, {len(rows) - insults} clean")


def main() -> None:
    dialogues = {}
    for split in ("train", "validation", "test"):
        for line in (SAMPLE / f"{split}.jsonl").read_text().splitlines():
            row = json.loads(line)
            dialogues[row["id"]] = row
    write_lines(OUT, labelled_lines(dialogues, INSULTS, LEFT_OUT, "test", CALM_DIALOGUES))
    write_lines(JUDGE_TRAIN_OUT, labelled_lines(dialogues, TRAIN_INSULTS, TRAIN_LEFT_OUT, "train", TRAIN_CALM_DIALOGUES))


if __name__ == "__main__":
    main()
