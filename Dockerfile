# The image helm/rolebridge runs (values image.repository/tag): the release
# binary as ENTRYPOINT, `serve` on 0.0.0.0:8080 by default, as user 10001.
#   docker build -t rolebridge:0.1.0 .
#   docker run --rm -p 8080:8080 rolebridge:0.1.0                 # SQLite under /var/lib/rolebridge/data
#   docker run --rm rolebridge:0.1.0 token create --tenant T --scope scim   # any other subcommand
# Not built by .ci/run (no image registry is reachable there).

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin rolebridge \
    && strip target/release/rolebridge

# bookworm-slim rather than distroless: the same glibc as the builder, CA
# certificates for LDAPS and Microsoft Graph, and /bin/sleep for the chart's
# exec preStop hook on Kubernetes before 1.30.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 rolebridge \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /var/lib/rolebridge --shell /usr/sbin/nologin rolebridge \
    && install -d -o 10001 -g 10001 /var/lib/rolebridge
COPY --from=build /src/target/release/rolebridge /usr/local/bin/rolebridge
# The shipped catalogs and example tenants; the chart mounts its own
# ConfigMap over ROLEBRIDGE_MAPPINGS instead.
COPY mappings/catalogs /etc/rolebridge/mappings/catalogs
COPY mappings/tenants /etc/rolebridge/mappings/tenants
# The default SQLite store (sqlite://data/rolebridge.db) lands here.
WORKDIR /var/lib/rolebridge
USER 10001:10001
ENV ROLEBRIDGE_LISTEN=0.0.0.0:8080 \
    ROLEBRIDGE_MAPPINGS=/etc/rolebridge/mappings
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/rolebridge"]
CMD ["serve"]
