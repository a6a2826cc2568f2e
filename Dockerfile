# herald, built from this checkout. Used by docker-compose.yml.
#   docker build -t herald .
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin herald

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/herald /usr/local/bin/herald
# Containers listen on all interfaces, so authentication must be on
# (herald refuses HERALD_AUTH=none off loopback).
ENV HERALD_LISTEN=0.0.0.0:8080
EXPOSE 8080
USER nobody
ENTRYPOINT ["herald"]
CMD ["serve"]
