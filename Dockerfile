# Pipeline component image: every Kubeflow step runs this project's code on TFX 1.16.0.
# Built by skaffold (skaffold.yaml); `bloodcell compile --image <tag>` points the pipeline at it.
FROM tensorflow/tfx:1.16.0

WORKDIR /app
COPY requirements.lock ./
# The lock is the environment CI tests (TFX 1.16.0, Beam 2.61.0, TF 2.16.2): only differences install.
# Bytecode compiled once here: a step that compiled TF, TFX and Beam from source at every start lost 25-30 s.
ENV UV_COMPILE_BYTECODE=1
RUN python -m pip install --no-cache-dir "uv==0.13.9" \
    && python -m uv pip install --system --no-cache -r requirements.lock
COPY setup.py config.yaml ./
COPY contracts/ contracts/
COPY training/ training/
COPY bloodcell/ bloodcell/
COPY components/ components/
COPY pipelines/ pipelines/
COPY serving/ serving/
COPY cli/ cli/
RUN python -m uv pip install --system --no-cache --no-deps -e . \
    && python -c "import components.serving_gate, training.trainer_module"

# oneDNN's CPU kernels in every step, as `bloodcell` sets them locally (cli/run_log.py: 1.8x faster training steps on AVX2).
ENV TF_ENABLE_ONEDNN_OPTS=1

# TFX's Kubeflow v2 launcher is the entry point (set per step in the compiled pipeline).
ENTRYPOINT []
