"""Stage commands start without the libraries they never use: each stage is its own process, and
importing transformers' model code, peft (with bitsandbytes) or rouge-score (with nltk) costs a
stage 1-3 s before it does anything, in every `dvc repro` and in every stage-running test."""

import subprocess
import sys

# Run in a fresh interpreter: this test process has imported everything already.
CHECK = """
import sys

import detoxsum.stages.filter, detoxsum.stages.tokenize
assert "transformers.modeling_utils" not in sys.modules, "filter/tokenize import transformers' model code"
import detoxsum.stages.fetch, detoxsum.stages.generate
assert "peft" not in sys.modules, "fetch/generate import peft"
assert "rouge_score" not in sys.modules, "generate imports rouge-score"
from detoxsum.models.adapters import apply_adapters
from detoxsum.models.decoding import is_peft_model
model = object()
assert apply_adapters(model, []) is model and not is_peft_model(model)
assert "peft" not in sys.modules, "the base model without adapters imports peft"
from detoxsum.scoring.metrics import rouge_per_dialogue
assert rouge_per_dialogue(["a cat sat"], [["a cat sat"]])["best"]["rouge1"] == [100.0]
print("ok")
"""


def test_light_stages_do_not_import_what_they_never_run():
    result = subprocess.run([sys.executable, "-c", CHECK], check=False, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
