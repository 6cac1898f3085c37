# The portvagt gateway image (the Helm chart in helm/portvagt runs it).
#   docker build -t portvagt:0.1.0 .
# Built in the full Rust image, run in a slim Debian that holds only what the binary needs.

FROM rust:1-bookworm AS build
# OpenSSL's headers and pkg-config: the openssl crate (SAML signature verification) links libssl.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libssl-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p portvagt

FROM debian:bookworm-slim
# ca-certificates: the public roots for issuers and audit repositories without a `ca_file`;
# libssl3: what the binary links at run time.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 \
 && rm -rf /var/lib/apt/lists/*
# A fixed unprivileged user, the one the chart's securityContext names. The configuration stays
# root-owned (the gateway only reads it); the audit spool is the user's.
RUN groupadd --system --gid 10001 portvagt \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin portvagt \
 && install -d -m 0755 /etc/portvagt \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/portvagt /var/lib/portvagt/audit
COPY --from=build /src/target/release/portvagt /usr/local/bin/portvagt
USER 10001:10001
# 8443: FHIR over mutual TLS; 9090: plain-HTTP /healthz, /readyz and /metrics.
EXPOSE 8443 9090
# The orchestrator checks health over HTTP on 9090 (the chart's probes); the image carries no
# HTTP client to do it itself.
# checkov:skip=CKV_DOCKER_2: health is probed by Kubernetes on the admin port
ENTRYPOINT ["portvagt"]
CMD ["serve", "--config", "/etc/portvagt/portvagt.toml"]
