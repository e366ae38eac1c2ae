# tritonserver 2.51 (NGC 24.10, the release the tests run through nvidia-pytriton) with the talkinghead
# python models and their dependencies. Build from the repository root:
#   docker build -f deploy/docker/triton.Dockerfile -t talkinghead-triton:0.1.0 .
# The NGC image brings the ONNX Runtime and TensorRT backends the production configs use, and the
# python backend stub for its own Python (3.10); weights and exported networks come from the models volume.
FROM nvcr.io/nvidia/tritonserver:24.10-py3

WORKDIR /opt/talkinghead
COPY pyproject.toml README.md ./
COPY python_backends python_backends
COPY client client
# The server extra pins torch; on Linux that wheel is the CUDA build. numpy stays < 2 (the stub's ABI).
RUN pip install --no-cache-dir '.[server]' \
 && pip install --no-cache-dir --no-deps facenet-pytorch==2.6.0
# MediaPipe's .tflite files (BlazeFace, Face Mesh, BlazePose; Apache-2.0) out of the mediapipe wheel, which is
# downloaded, never installed (its runtime pins protobuf<5).
ENV TALKINGHEAD_MEDIAPIPE_DIR=/opt/talkinghead/mediapipe
RUN python3 -m python_backends.mediapipe_models.files --dir /opt/talkinghead/mediapipe
COPY model_repository model_repository
COPY ensembles ensembles
COPY deploy/triton/networks deploy/triton/networks

USER triton-server
ENTRYPOINT ["tritonserver"]
