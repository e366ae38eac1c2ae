# The HTTP gateway: the client package and its gateway extra (FastAPI, uvicorn, psycopg, boto3; no torch, no
# server), ffmpeg from imageio-ffmpeg's wheel.
#   docker build -f deploy/docker/gateway.Dockerfile -t talkinghead-gateway:0.1.0 .
FROM python:3.11-slim

WORKDIR /opt/talkinghead
COPY pyproject.toml README.md ./
COPY python_backends python_backends
COPY client client
RUN pip install --no-cache-dir '.[gateway]' && useradd --uid 10001 --create-home talkinghead
USER 10001
# The production image is strict (client/policy.py): it does not start without a configured signing credential and
# webhook master key. A local trial of the image passes -e TALKINGHEAD_GATEWAY_POLICY_PROFILE=development.
ENV TALKINGHEAD_GATEWAY_POLICY_PROFILE=strict
EXPOSE 8080
ENTRYPOINT ["talkinghead"]
CMD ["gateway", "--host", "0.0.0.0", "--port", "8080"]
