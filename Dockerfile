# The anycastd image: static binaries on Debian slim with the tools an
# operator reaches for inside a director (ipvsadm, ip, nft, dig).
#   docker build -t ghcr.io/anycastd/anycastd:latest .
# Run it with the host's network and the capabilities the daemon needs:
#   docker run -d --network host --cap-add NET_ADMIN --cap-add NET_RAW \
#     -v /etc/anycastd:/etc/anycastd:ro -v /var/lib/anycastd:/var/lib/anycastd \
#     -v /run/anycastd:/run/anycastd ghcr.io/anycastd/anycastd:latest
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/ ./cmd/anycastd ./cmd/anyctl

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ipvsadm iproute2 nftables bind9-dnsutils procps ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/anycastd /out/anyctl /usr/local/sbin/
ENV ANYCTL_SOCKET=/run/anycastd/anycastd.sock
ENTRYPOINT ["/usr/local/sbin/anycastd"]
CMD ["-c", "/etc/anycastd/anycastd.yaml"]
