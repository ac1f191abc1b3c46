// Package cluster is the gossip membership of the directors
// (hashicorp/memberlist): node state, replication of the cluster-wide config
// document, and the deterministic election of the active set.
package cluster
