// Package routing will hold the Announcer interface, implemented by
// routing/bgp (embedded GoBGP), routing/kernel (route or address for an
// external OSPF/BGP daemon), routing/vrrp (VRRPv3) and routing/dns
// (health-aware DNS round-robin).
package routing
