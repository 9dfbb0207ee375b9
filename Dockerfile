# Clearance Gateway image: `docker build -t clearance-gateway .`
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 gateway
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/* && rm -rf /wheels
WORKDIR /etc/gateway
COPY rules ./rules
COPY deploy/gateway.yaml ./gateway.yaml
COPY deploy/compose.yaml ./compose.yaml
RUN sed -i 's#^rules: ../rules/#rules: rules/#' gateway.yaml
USER gateway
EXPOSE 8080 9090
ENTRYPOINT ["gateway"]
CMD ["serve", "-c", "/etc/gateway/gateway.yaml"]
