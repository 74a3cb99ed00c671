# PipelineJobs Manager for Abaco (Tapis v2) and Tapis v3 actors.
# Abaco runs CMD once per message, with MSG and the URL parameters in the environment.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/pipelinejobs
COPY requirements.txt ./
RUN pip install -r requirements.txt

COPY pyproject.toml README.md ./
COPY pipelinejobs/ ./pipelinejobs/
COPY schemas/ ./schemas/
RUN pip install --no-deps . && python -m compileall -q /usr/local/lib/python3.12/site-packages/pipelinejobs

# reactor.py reads the config.yml beside it; schemas/ also ship inside the package.
COPY reactor.py config.yml /
COPY schemas/ /schemas/

# Abaco runs containers as the actor owner's uid; nothing here needs root.
USER nobody
WORKDIR /
CMD ["python", "/reactor.py"]
