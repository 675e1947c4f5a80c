# autocompress: the default command runs the embedded default search (digits, SQLite, local Ray).
# The image also serves as a Ray node (`ray start ...`) and as a KubeRay RayJob image; see
# docs/cluster.md. The install steps are the README's own, which CI runs on every change.
FROM python:3.11-slim

WORKDIR /opt/autocompress
COPY pyproject.toml README.md ./
COPY autocompress ./autocompress
COPY search_spaces ./search_spaces
COPY studies/default.yaml ./studies/default.yaml

RUN pip install --no-cache-dir torch==2.14.1 torchvision==0.29.1 \
 && pip install --no-cache-dir -e ".[postgres]"

# Token authentication stays on for every Ray process started in this image.
ENV RAY_AUTH_MODE=token

# Results land in studies/ (SQLite database, cached baselines, artifacts): mount it to keep them.
VOLUME ["/opt/autocompress/studies"]
CMD ["autocompress", "search"]
