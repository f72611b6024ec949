#!/usr/bin/env bash
# Does the registered model run where this project is not installed? A throwaway virtualenv gets
# only MLflow; `mlflow models predict --env-manager virtualenv` then builds the model's own
# environment from its requirements.txt (pyenv for the Python version, pip for the rest), loads the
# model with the code it carries and summarizes two dialogues. Not part of `make test`: it installs
# torch and transformers from the package index (minutes, a few GB of disk).
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
"$work/client/bin/pip" install --quiet "$mlflow_pin" virtualenv
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
export MLFLOW_TRACKING_URI="$tracking_uri" MLFLOW_ENV_ROOT="$work/envs"
time "$work/client/bin/mlflow" models predict -m "$model_uri" -i dialogues.csv -t csv \
    --env-manager virtualenv -o predictions.json
echo "predictions.json:"
cat predictions.json; echo
