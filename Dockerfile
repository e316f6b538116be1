# Switchboard's one image: `docker run IMAGE api|worker|migrate|gateway` (see
# docker-compose.temporal.yml). Settings come only from SWITCHBOARD_* environment variables;
# .env files are kept out of the build context by .dockerignore.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/switchboard \
        --shell /usr/sbin/nologin switchboard
WORKDIR /home/switchboard

# Dependencies first, from the runtime lock alone (no embedded dev servers, test or lint tools),
# so code changes reuse this layer.
COPY pyproject.toml requirements-runtime.lock /src/
RUN pip install -r /src/requirements-runtime.lock

# Then Switchboard itself, without touching the locked dependencies. Processes import the
# installed packages (migrations included) from site-packages, so the sources are dropped.
COPY . /src/
RUN pip install --no-deps /src && rm -rf /src

USER 10001:10001

# api, gateway, worker metrics (9464 app, 9465 Temporal SDK; both bound to 127.0.0.1 for now).
EXPOSE 8400 8401 9464 9465

ENTRYPOINT ["switchboard"]
CMD ["--help"]
