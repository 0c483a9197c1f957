# One slim image for the server and the agent:
#   docker run … IMAGE serve            (the default command)
#   docker run … IMAGE agent --once …   (any bkup command)
# Configuration is by BKUP_* variables (docs/settings.md); docs/deploy.md walks through it.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    BKUP_DATA_DIR=/var/lib/bkup \
    BKUP_CONFIG_DIR=/etc/bkup \
    BKUP_STATE_DIR=/var/lib/bkup/agent \
    BKUP_HOST=0.0.0.0 \
    BKUP_PORT=8200

# Every dependency ships manylinux wheels: no compiler in the image.
COPY pyproject.toml README.md /src/
COPY src /src/src
RUN pip install /src && rm -rf /src \
 && groupadd --system --gid 10001 bkup \
 && useradd --system --uid 10001 --gid bkup --home-dir /var/lib/bkup --shell /usr/sbin/nologin bkup \
 && mkdir -p /var/lib/bkup /etc/bkup \
 && chown bkup:bkup /var/lib/bkup /etc/bkup \
 && chmod 0700 /etc/bkup

# data: SQLite catalog, local storage, agent state; config: bkup.toml and the generated master key.
# With PostgreSQL + S3 and BKUP_MASTER_KEY set, the server writes to neither.
VOLUME ["/var/lib/bkup", "/etc/bkup"]
WORKDIR /var/lib/bkup
USER bkup
EXPOSE 8200

# The agent image serves no HTTP: compose disables this check for agent services.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('BKUP_PORT', '8200'), timeout=4)"]

ENTRYPOINT ["bkup"]
CMD ["serve"]
