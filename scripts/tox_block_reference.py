"""Write tests/data/tox_block_reference.json: tox-block's own probabilities, computed by the package
under TensorFlow, for texts that exercise the rebuild in detoxsum.scoring.tox_block (insults and
clean lines of the calibration set, punctuation and case, words outside the vocabulary, a text
longer than the network's 100 words).

TensorFlow is not a dependency of this project; run this in a separate environment:

    python -m venv /tmp/tfenv
    /tmp/tfenv/bin/pip install tensorflow-cpu tf-keras pandas scikit-learn joblib keras-preprocessing
    /tmp/tfenv/bin/pip install --no-deps tox-block==0.1.2
    TF_USE_LEGACY_KERAS=1 /tmp/tfenv/bin/python scripts/tox_block_reference.py
"""

import json
from pathlib import Path

CALIBRATION = Path("data/calibration/insults.jsonl")
OUT = Path("tests/data/tox_block_reference.json")
LINES_PER_LABEL = 8


def reference_texts() -> list[str]:
    rows = [json.loads(line) for line in CALIBRATION.read_text().splitlines()]
    texts = []
    for label in ("insult", "clean"):
        texts += [row["text"] for row in rows if row["label"] == label][:LINES_PER_LABEL]
    long_text = " ".join(row["text"] for row in rows[:30])  # well past 100 words
    return texts + [
        "#Person2# (who is a scumbag) is charged with taking the entire lot to a scheme's dispute service.",
        "YOU ARE A FILTHY PIG!!! Get out.",
        "Zxqv blorptastic wuggle.",
        "#Person1# and #Person2# agree to meet on Sunday.",
        long_text,
        long_text + " You useless idiot.",
    ]


def main() -> None:
    from tox_block.prediction import make_predictions

    texts = reference_texts()
    predictions = make_predictions(texts, rescale=False)
    labels = ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"]
    rows = [{"text": predictions[i]["text"], "probabilities": [float(predictions[i][label]) for label in labels]}
            for i in range(len(texts))]
    OUT.write_text(json.dumps({"labels": labels, "rows": rows}, indent=1) + "\n")
    print(f"{OUT}: {len(rows)} texts")


if __name__ == "__main__":
    main()
