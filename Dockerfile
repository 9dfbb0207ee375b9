# Clearance Gateway image:  docker build -t clearance-gateway .
# deploy/README.md says how to run it (compose, Kubernetes) and what it expects.

# Build stage: the full Python image has the C compiler the native masking
# extension needs; every dependency becomes a wheel here.
FROM python:3.11-bookworm AS build
WORKDIR /src
COPY . .
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# Runtime stage: slim Debian, the same Python (so the wheels fit), no compiler,
# installed offline from the wheels above, run as an unprivileged user.
FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GATEWAY_RULES=/etc/gateway/rules
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin gateway \
    && install -d -o 10001 -g 10001 -m 0750 /var/log/gateway
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels clearance-gateway \
    && rm -rf /wheels
WORKDIR /etc/gateway
# The shipped rule pack and the documented gateway.yaml; mount your own over them.
COPY rules ./rules
COPY deploy/gateway.yaml ./gateway.yaml
# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
# listen and admin_listen of the shipped configurations.
EXPOSE 8080 9090
# /healthz on the admin listener (answered by the supervisor with workers: N).
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9090/healthz', timeout=4)"]
# SIGTERM: stop accepting, finish in-flight requests (limits.shutdown_timeout), exit 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["gateway"]
CMD ["serve", "-c", "/etc/gateway/gateway.yaml"]
