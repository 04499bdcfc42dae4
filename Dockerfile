# openai-key-server: a small, non-root image with no shell.
#
#   docker build -t openai-key-server .
#   docker run -p 8080:8080 --env-file .env \
#     -v /path/to/secrets:/run/secrets:ro openai-key-server
#
# Secrets come as files (*_FILE variables), never as build arguments or
# image layers: OPENAI_MANAGEMENT_KEY_FILE, CLIENT_SECRET_FILE,
# SESSION_SECRET_FILE (see .env.example and README "Operating it").

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
# The production build: no sandbox, no demo. The same command CI runs.
RUN cargo build --release --locked --no-default-features --bin openai-key-server

# Distroless: glibc and the CA certificates the TLS verifier reads (for
# OpenAI and the identity providers), no shell, no package manager, user
# 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/openai-key-server /usr/local/bin/openai-key-server
USER 65532:65532
ENV BIND_ADDRESS=0.0.0.0 \
    PORT=8080 \
    LOG_FORMAT=json
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/openai-key-server"]
CMD ["serve"]
