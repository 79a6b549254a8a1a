# The procqueue image: migrate, worker and dashboard all run from it.
# Stage 1 builds a wheel of this checkout; the wheel carries migrations/, sql/ and the
# sample schema inside the package. Stage 2 installs only that wheel: no source checkout
# and no editable install, exactly what `pip install procqueue-*.whl` gives a user.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY procqueue ./procqueue
COPY migrations ./migrations
COPY sql ./sql
COPY examples ./examples
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# psql, for `procqueue migrate --from-scratch | psql` and debugging.
RUN apt-get update && apt-get install -y --no-install-recommends postgresql-client \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
RUN pip install /wheels/*.whl && rm -rf /wheels
RUN useradd --system --create-home --home-dir /home/procqueue procqueue
USER procqueue
WORKDIR /home/procqueue
CMD ["procqueue", "worker"]
