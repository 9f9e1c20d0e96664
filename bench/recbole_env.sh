#!/usr/bin/env bash
# A SEPARATE virtualenv holding RecBole 1.2.1, only for bench/sasrec_vs_recbole.py: RecBole and its pinned
# requirements never enter the project's own environment. Created once, reused while its stamp file is there.
# Prints the venv's python on stdout. Override with RECBOLE_VENV, RECBOLE_PYTHON, RECBOLE_TORCH.
#
# What RecBole 1.2.1 needs to import on Python 3.11 with a modern torch:
# - numpy < 2: RecBole's Config.compatibility_settings() re-creates np.float/np.bool/... from np.float_ & co,
#   which numpy 2 removed (numpy 1.26 still has them, so the old aliases come back and evaluator code works).
# - torch: the same version as the project's, so both sides run the same kernels. torch >= 2.6 loads checkpoints
#   with weights_only=True, which RecBole's best-model checkpoint (it pickles the Config) fails: the bench driver
#   passes weights_only=False for that file it wrote itself.
# - ray (pinned <=2.6.3, no Python 3.11 wheels for the older ones) is only imported by recbole.quick_start and
#   hyper-parameter tuning; the driver uses Config/create_dataset/Trainer directly, so RecBole goes in --no-deps
#   with its real import needs listed below (thop too: it would otherwise pull its own torch).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${RECBOLE_VENV:-$ROOT/.explorer/recbole-venv}
PY=${RECBOLE_PYTHON:-python3.11}
if [ -z "${RECBOLE_TORCH:-}" ]; then
    RECBOLE_TORCH=$("$ROOT/.venv/bin/python" -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null \
                    || echo "2.5.1")
fi
STAMP="$VENV/.ready-recbole-1.2.1-torch-$RECBOLE_TORCH"
if [ -f "$STAMP" ]; then
    echo "$VENV/bin/python"
    exit 0
fi
echo "creating the RecBole environment in $VENV (torch $RECBOLE_TORCH; one-off, large download)..." >&2
rm -rf "$VENV"
"$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip >&2
"$VENV/bin/python" -m pip install -q "torch==$RECBOLE_TORCH" "numpy==1.26.4" "scipy>=1.6,<1.14" "pandas>=1.3,<2.3" \
    "scikit-learn>=0.23.2,<1.6" "tqdm>=4.48.2" "colorlog==4.7.2" "colorama==0.4.4" "pyyaml>=5.1" "tensorboard>=2.5" \
    "tabulate>=0.8.10" "texttable>=0.9" "psutil>=5.9" "plotly>=4" >&2
"$VENV/bin/python" -m pip install -q --no-deps "recbole==1.2.1" "thop>=0.1.1.post2207130030" >&2
"$VENV/bin/python" -c "import recbole.config, recbole.data, recbole.model.sequential_recommender.sasrec, recbole.trainer, recbole.utils" >&2
touch "$STAMP"
echo "$VENV/bin/python"
