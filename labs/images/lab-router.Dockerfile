# ghcr.io/anycastd/lab-router: the labs' upstream router (BIRD 2, or FRR in
# labs/frr.clab.yml).
#   docker build -t ghcr.io/anycastd/lab-router:latest -f labs/images/lab-router.Dockerfile .
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends bird2 frr iproute2 nftables procps \
 && rm -rf /var/lib/apt/lists/*
CMD ["sleep", "infinity"]
