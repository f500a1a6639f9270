# Sourced by stage*.sh on the GPU machine: carried wheels, local model copies, data.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl 2>/dev/null || true
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export CTXKIT_CACHE=/root/ctxkit-cache
export CTXKIT_DEFAULT_LLM=${CTXKIT_DEFAULT_LLM:-/root/m/SmolLM2-135M-Instruct.Q4_1.gguf}
export CTXKIT_DEFAULT_EMBEDDER=${CTXKIT_DEFAULT_EMBEDDER:-/root/minilm}
export DATA=${DATA:-/root/shared/data}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
