# syntax=docker/dockerfile:1
# imgrep's image: the zipapp alone on distroless Python, running as non-root.
#   docker build -t imgrep:latest .

# The builder's Python must be the runtime's minor version: distroless
# python3-debian12 ships Debian bookworm's Python 3.11.
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY build_zipapp.py ./
COPY imgrep/ ./imgrep/
RUN python build_zipapp.py && python dist/imgrep.pyz --version

FROM gcr.io/distroless/python3-debian12:nonroot
COPY --from=build /src/dist/imgrep.pyz /app/imgrep.pyz
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
# Numeric, so Kubernetes can verify runAsNonRoot (65532 is distroless "nonroot").
USER 65532:65532
EXPOSE 8443 8080
ENTRYPOINT ["python3", "/app/imgrep.pyz"]
CMD ["serve"]
