# sessiond in a container: build with the Rust toolchain, run on a slim Debian.
#   docker build -t sessiond .
#   docker run -p 50051:50051 -v sessiond-data:/var/lib/sessiond sessiond
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
COPY src src
RUN cargo build --release --locked && cp target/release/sessiond /usr/local/bin/sessiond

FROM debian:bookworm-slim
COPY --from=build /usr/local/bin/sessiond /usr/local/bin/sessiond
VOLUME /var/lib/sessiond
EXPOSE 50051 50052
ENTRYPOINT ["sessiond"]
# A container must bind 0.0.0.0, which sessiond refuses without TLS and authentication: this
# default command is a plaintext, open single node (--insecure) for trying the image out.
# Real deployments pass a config with [tls] and [auth] (see docker-compose.yml).
CMD ["serve", "--listen", "0.0.0.0:50051", "--peer-listen", "0.0.0.0:50052", "--data-dir", "/var/lib/sessiond", "--insecure"]
