# The HTTP gateway: the client package only (no torch, no server), ffmpeg from imageio-ffmpeg's wheel.
#   docker build -f deploy/docker/gateway.Dockerfile -t talkinghead-gateway:0.1.0 .
FROM python:3.11-slim

WORKDIR /opt/talkinghead
COPY pyproject.toml README.md ./
COPY python_backends python_backends
COPY client client
RUN pip install --no-cache-dir . && useradd --uid 10001 --create-home talkinghead
USER 10001
EXPOSE 8080
ENTRYPOINT ["talkinghead"]
CMD ["gateway", "--host", "0.0.0.0", "--port", "8080"]
