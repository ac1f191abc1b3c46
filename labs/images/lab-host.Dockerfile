# ghcr.io/anycastd/lab-host: clients, real servers and bridges of the labs
# (containerlab with Docker; the namespace runner uses the host's tools).
#   docker build -t ghcr.io/anycastd/lab-host:latest -f labs/images/lab-host.Dockerfile .
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends iproute2 nftables nginx curl bind9-dnsutils iputils-ping procps ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=ghcr.io/anycastd/anycastd:latest /usr/local/sbin/anyctl /usr/local/sbin/anyctl
CMD ["sleep", "infinity"]
