# Multi-stage build: compile the server, bundle the browser demo, ship both in a small
# non-root runtime image.
FROM rust:1.95-bookworm AS server
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p rtcio-signal

FROM node:20-bookworm-slim AS demo
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY client-demo client-demo
RUN npm run build:demo

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=server /src/target/release/rtcio-signal /usr/local/bin/rtcio-signal
COPY --from=demo /src/client-demo /app/client-demo
ENV HOST=0.0.0.0 PORT=3001
EXPOSE 3001
USER nonroot
ENTRYPOINT ["/usr/local/bin/rtcio-signal"]
