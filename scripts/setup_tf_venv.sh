#!/usr/bin/env bash
# Creates .venv-tf: the official TensorFlow stack (tensorflow-cpu + tf-models-official) in its own
# virtual environment, used by the `tf`-marked tests (tests/test_interop_convert.py,
# test_parity_float64.py, test_tf_bundle.py) to write official checkpoints; `torchspine convert`
# itself reads them without TensorFlow. Kept apart from .venv so torch and TensorFlow never share
# an environment. Versions: ones known to work together.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${TF_VENV:-.venv-tf}
STAMP="$VENV/.installed-tf-2.20"
if [ -f "$STAMP" ]; then
  echo "TensorFlow stack already in $VENV"
  exit 0
fi
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q tensorflow-cpu==2.20.0
# With dependencies, tf-keras pulls the GPU `tensorflow` wheel into the same folder: --no-deps.
"$VENV/bin/pip" install -q --no-deps tf-keras==2.20.1 tf-models-official==2.20.0
# What importing official.vision needs (also --no-deps), and matplotlib's own small deps.
"$VENV/bin/pip" install -q --no-deps PyYAML gin-config immutabledict scipy tensorflow-datasets etils toml \
  promise tensorflow-metadata tqdm pycocotools opencv-python-headless matplotlib
"$VENV/bin/pip" install -q pyparsing cycler kiwisolver python-dateutil fonttools contourpy pillow
TF_USE_LEGACY_KERAS=1 TF_CPP_MIN_LOG_LEVEL=2 "$VENV/bin/python" -c \
  "import tensorflow, official.vision.modeling.backbones.spinenet_mobile, official.vision.modeling.heads"
touch "$STAMP"
echo "TensorFlow stack installed in $VENV"
