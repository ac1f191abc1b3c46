// Package health will hold the probes of real servers (tcp, http, https,
// udp, dns, exec), the monitor that applies rise/fall to their results, and
// the director's own (self) health. It knows nothing of IPVS or routing.
package health
