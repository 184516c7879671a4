# The flashsale app image: the API (`flashsale serve`), the write-behind worker (`flashsale worker`) and the
# one-shot migration (`flashsale db migrate`), as used by compose.yaml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# The built wheel, as a user would install it: Lua scripts and SQL travel inside the package.
COPY . /src
RUN pip install /src \
    && rm -rf /src \
    && useradd --system --uid 10001 --home-dir /app flashsale \
    && chown -R flashsale /app

USER flashsale
EXPOSE 8000

# compose.yaml sets the command per service; on its own the image serves the API.
CMD ["flashsale", "serve"]
