// Package api is anycastd's local API as its clients see it: the JSON
// types of its requests and answers, and a client that reaches a daemon on
// its unix socket or its TLS port.
//
// It imports only configs (a services document is a list of
// configs.Service) and the standard library, so that a client (anyctl, a
// lab, an operator's tool) does not link the daemon: no GoBGP, memberlist
// or the IPVS dataplane. The daemon's handlers (package director) fill
// these types from its own.
package api
