#!/usr/bin/env bash
# Does the registered model run where this project is not installed? A throwaway virtualenv gets
# only MLflow and uv; `mlflow models predict --env-manager uv` then builds the model's own
# environment from its requirements.txt (uv finds the Python version among the installed ones and
# installs the rest from the package index), loads the model with the code it carries and
# summarizes two dialogues. Not part of `make test`: it installs torch and transformers (minutes,
# a few GB of disk). (`--env-manager virtualenv` works too where pyenv may download Python: MLflow
# gives pyenv a fresh root for every environment, so it always builds Python from python.org.)
#
#   scripts/predict_in_fresh_env.sh [MODEL_URI] [TRACKING_URI]
#   (defaults: models:/detoxsum-summarizer@champion, sqlite:///$PWD/mlflow.db)
set -euo pipefail
model_uri=${1:-models:/detoxsum-summarizer@champion}
tracking_uri=${2:-sqlite:///$PWD/mlflow.db}
mlflow_pin=$(grep -E '^mlflow==' "$(dirname "$0")/../requirements.txt" | cut -d' ' -f1)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

python3 -m venv "$work/client"
uv_pin=uv==0.13.9
"$work/client/bin/pip" install --quiet "$mlflow_pin" "$uv_pin"
# uv reads no pip.conf: hand it the same local wheel folder pip uses here, if any.
[ -n "${PIP_FIND_LINKS:-}" ] && export UV_FIND_LINKS="$PIP_FIND_LINKS"
export PATH="$work/client/bin:$PATH"  # MLflow calls `uv`
cat > "$work/dialogues.csv" <<'CSV'
dialogue
"#Person1#: Did you book the room for Thursday's review?
#Person2#: Not yet. The big one is taken, so I'll ask for the one by the kitchen.
#Person1#: Fine, as long as the projector works this time."
"#Person1#: You ate my leftovers again, you selfish pig.
#Person2#: They were in the fridge for a week!
#Person1#: That's no excuse. Label your own food and leave mine alone."
CSV
echo "client: $("$work/client/bin/python" -c 'import sys; print(sys.version.split()[0])'), $mlflow_pin," \
     "detoxsum importable: $("$work/client/bin/python" -c 'import importlib.util as u; print(u.find_spec("detoxsum") is not None)')"
cd "$work"  # nothing of the project on the path
export MLFLOW_TRACKING_URI="$tracking_uri"
time "$work/client/bin/mlflow" models predict -m "$model_uri" -i dialogues.csv -t csv \
    --env-manager uv -o predictions.json
echo "predictions.json:"
cat predictions.json; echo
