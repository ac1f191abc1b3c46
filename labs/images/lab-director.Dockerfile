# ghcr.io/anycastd/lab-director: the labs' directors. The anycastd image
# plus BIRD 2 (the director's own OSPF daemon in labs/ospf.clab.yml), with
# an idle main process: containerlab starts a container before it wires
# the links, so the labs start anycastd from the node's exec, after.
#   docker build -t ghcr.io/anycastd/lab-director:latest -f labs/images/lab-director.Dockerfile .
FROM ghcr.io/anycastd/anycastd:latest
RUN apt-get update \
 && apt-get install -y --no-install-recommends bird2 iputils-ping \
 && rm -rf /var/lib/apt/lists/*
ENTRYPOINT []
CMD ["sleep", "infinity"]
