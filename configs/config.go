// Package configs is the configuration model of anycastd: the typed document
// every director loads, its defaults, loading with viper (file, ANYCASTD_*
// environment, flags) and validation of the whole document.
//
// A Config is produced only by Load or Parse, which fill defaults and validate
// before returning; a caller never sees a half-valid document. The services
// part (Config.Services) is cluster-wide and replicated by the cluster
// package; everything else is local to one node.
package configs

import (
	"net/netip"
	"time"
)

// Config is one director's whole configuration document.
type Config struct {
	Node     Node      `mapstructure:"node" json:"node"`
	Cluster  Cluster   `mapstructure:"cluster" json:"cluster"`
	Routing  Routing   `mapstructure:"routing" json:"routing"`
	API      API       `mapstructure:"api" json:"api"`
	Health   Health    `mapstructure:"health" json:"health"`
	Services []Service `mapstructure:"services" json:"services"`
}

// Node identifies this director.
type Node struct {
	// Name is unique in the cluster; it defaults to the host name.
	Name string `mapstructure:"name" json:"name"`
	// Addresses are this director's own addresses (next hop, gossip
	// advertise address, what `anyctl members` shows).
	Addresses []netip.Addr `mapstructure:"addresses" json:"addresses,omitempty"`
	// StateDir holds what must survive a restart: the last applied cluster
	// config and the host settings recorded before anycastd changed them.
	StateDir string `mapstructure:"state_dir" json:"state_dir"`
	// Dataplane is where the IPVS table lives: kernel (default), or
	// memory, a simulation for labs on kernels without IPVS: the director
	// gossips, checks and announces, but balances nothing.
	Dataplane string `mapstructure:"dataplane" json:"dataplane"`
	// ConnSync shares the IPVS connection table with the other
	// directors (kernel dataplane).
	ConnSync ConnSync `mapstructure:"conn_sync" json:"conn_sync"`
}

// ConnSync is the kernel's IPVS connection synchronisation between
// directors (ipvsadm --start-daemon master and backup at once): every
// director sends the connections it handles to the directors' segment and
// takes the others', so that a flow ECMP moves to another director finds
// its real server there, even while the directors' scheduler tables
// differ (a backend changing while a director fails or comes back, where
// mh alone picks another real server and the flow is reset).
type ConnSync struct {
	Enabled bool `mapstructure:"enabled" json:"enabled"`
	// Interface is where the synchronisation multicast goes: the
	// directors' common segment.
	Interface string `mapstructure:"interface" json:"interface,omitempty"`
	// SyncID tells this tier's messages from another's on the same
	// segment (0-255; every director of a tier has the same one).
	SyncID int `mapstructure:"sync_id" json:"sync_id"`
	// Group and Port are the multicast group and base UDP port
	// (default 224.0.0.81 and 8848, the kernel's).
	Group netip.Addr `mapstructure:"group" json:"group,omitzero"`
	Port  int        `mapstructure:"port" json:"port,omitempty"`
	// TTL of the multicast (default 1: the segment only).
	TTL int `mapstructure:"ttl" json:"ttl,omitempty"`
	// MaxLen is the largest message (UDP payload); 0: from the
	// interface's MTU.
	MaxLen int `mapstructure:"max_len" json:"max_len,omitempty"`
}

// Dataplanes.
const (
	DataplaneKernel = "kernel"
	DataplaneMemory = "memory"
)

// Cluster is the gossip membership of the directors.
type Cluster struct {
	// Bind is the address the gossip listener binds (TCP and UDP).
	Bind netip.Addr `mapstructure:"bind" json:"bind"`
	// Port is the gossip port (TCP and UDP).
	Port int `mapstructure:"port" json:"port"`
	// Advertise is the address other members use to reach this one; the
	// first of Node.Addresses (or Bind) when unset.
	Advertise netip.Addr `mapstructure:"advertise" json:"advertise,omitzero"`
	// Seeds are other members to join at start, "host" or "host:port".
	Seeds []string `mapstructure:"seeds" json:"seeds,omitempty"`
	// Keys are base64 AES keys (16, 24 or 32 bytes). The first encrypts;
	// all of them decrypt, which is how a key is rotated.
	Keys []string `mapstructure:"keys" json:"-"`
	// Insecure must be true to run without Keys.
	Insecure bool `mapstructure:"insecure" json:"insecure"`
	// MaxActive is how many healthy members announce at once: the upstream
	// switches' ECMP width. The others are warm standbys. It is one value
	// for the cluster: the median of the live members' values (see
	// director.ActiveSize).
	MaxActive int `mapstructure:"max_active" json:"max_active"`
	// Priority orders members for the active set: lower is preferred,
	// ties are broken by name.
	Priority int `mapstructure:"priority" json:"priority"`
}

// Routing modes.
const (
	ModeBGP    = "bgp"
	ModeKernel = "kernel"
	ModeVRRP   = "vrrp"
	ModeDNS    = "dns"
)

// Routing says how this director tells the network it serves the VIPs.
type Routing struct {
	// Mode is bgp (default), kernel, vrrp or dns.
	Mode   string `mapstructure:"mode" json:"mode"`
	BGP    BGP    `mapstructure:"bgp" json:"bgp"`
	Kernel Kernel `mapstructure:"kernel" json:"kernel"`
	VRRP   VRRP   `mapstructure:"vrrp" json:"vrrp"`
	DNS    DNS    `mapstructure:"dns" json:"dns"`
}

// BGP configures the embedded BGP speaker (mode bgp).
type BGP struct {
	ASN      uint32     `mapstructure:"asn" json:"asn"`
	RouterID netip.Addr `mapstructure:"router_id" json:"router_id"`
	// ListenPort is the BGP listener; -1 does not listen and only dials out.
	ListenPort int `mapstructure:"listen_port" json:"listen_port"`
	// NextHopIPv4 and NextHopIPv6 override next-hop self.
	NextHopIPv4 netip.Addr `mapstructure:"next_hop_ipv4" json:"next_hop_ipv4,omitzero"`
	NextHopIPv6 netip.Addr `mapstructure:"next_hop_ipv6" json:"next_hop_ipv6,omitzero"`
	// Communities ("65000:100") and LargeCommunities ("65000:1:2") are
	// attached to every announced VIP.
	Communities      []string `mapstructure:"communities" json:"communities,omitempty"`
	LargeCommunities []string `mapstructure:"large_communities" json:"large_communities,omitempty"`
	MED              uint32   `mapstructure:"med" json:"med"`
	// GracefulShutdown is how long a draining director announces with the
	// GRACEFUL_SHUTDOWN community (RFC 8326) before it withdraws.
	GracefulShutdown time.Duration `mapstructure:"graceful_shutdown" json:"graceful_shutdown"`
	Neighbors        []Neighbor    `mapstructure:"neighbors" json:"neighbors"`
}

// Neighbor is one BGP peer, normally an upstream switch.
type Neighbor struct {
	Address      netip.Addr `mapstructure:"address" json:"address"`
	ASN          uint32     `mapstructure:"asn" json:"asn"`
	LocalAddress netip.Addr `mapstructure:"local_address" json:"local_address,omitzero"`
	// Password enables TCP MD5 signatures (RFC 2385).
	Password     string        `mapstructure:"password" json:"-"`
	HoldTime     time.Duration `mapstructure:"hold_time" json:"hold_time"`
	Keepalive    time.Duration `mapstructure:"keepalive" json:"keepalive"`
	ConnectRetry time.Duration `mapstructure:"connect_retry" json:"connect_retry"`
	// Multihop is the TTL for a peer that is not directly connected; 0
	// means directly connected.
	Multihop int `mapstructure:"multihop" json:"multihop"`
	// Families are the address families of the session: ipv4, ipv6.
	// Default: the family of Address.
	Families []string `mapstructure:"families" json:"families"`
	BFD      BFD      `mapstructure:"bfd" json:"bfd"`
}

// BFD configures bidirectional forwarding detection for a BGP neighbour.
type BFD struct {
	Enabled    bool          `mapstructure:"enabled" json:"enabled"`
	MinTx      time.Duration `mapstructure:"min_tx" json:"min_tx"`
	MinRx      time.Duration `mapstructure:"min_rx" json:"min_rx"`
	Multiplier int           `mapstructure:"multiplier" json:"multiplier"`
}

// Kernel configures mode kernel: the VIP is put where an external routing
// daemon (FRR, BIRD) picks it up and redistributes it. Exactly one of Table
// and Interface is set.
type Kernel struct {
	// Table is a routing table the VIP routes are added to.
	Table int `mapstructure:"table" json:"table,omitempty"`
	// Interface gets the VIP as a /32 (/128) address.
	Interface string `mapstructure:"interface" json:"interface,omitempty"`
	// Protocol marks our routes (rtm_protocol) so the daemon can filter on it.
	Protocol int `mapstructure:"protocol" json:"protocol"`
	// Metric is the route priority in Table.
	Metric int `mapstructure:"metric" json:"metric"`
}

// VRRP configures mode vrrp (VRRPv3, RFC 5798).
type VRRP struct {
	Interface string `mapstructure:"interface" json:"interface"`
	// AdvertInterval is sent in centiseconds: 10ms..40.95s, a multiple of 10ms.
	AdvertInterval time.Duration `mapstructure:"advert_interval" json:"advert_interval"`
	// VirtualMAC uses 00-00-5E-00-01-{VRID} instead of the interface MAC.
	VirtualMAC bool `mapstructure:"virtual_mac" json:"virtual_mac"`
	// UnicastPeers replace multicast when set.
	UnicastPeers []netip.Addr   `mapstructure:"unicast_peers" json:"unicast_peers,omitempty"`
	Instances    []VRRPInstance `mapstructure:"instances" json:"instances"`
}

// VRRPInstance is one virtual router (one VRID).
type VRRPInstance struct {
	Name string       `mapstructure:"name" json:"name"`
	VRID int          `mapstructure:"vrid" json:"vrid"`
	VIPs []netip.Addr `mapstructure:"vips" json:"vips"`
	// Priority 1..254; 255 only for the owner of the addresses.
	Priority     int           `mapstructure:"priority" json:"priority"`
	Preempt      bool          `mapstructure:"preempt" json:"preempt"`
	PreemptDelay time.Duration `mapstructure:"preempt_delay" json:"preempt_delay"`
	// UnhealthyPriority is advertised while this director's self health
	// fails; 0 gives up mastership at once.
	UnhealthyPriority int `mapstructure:"unhealthy_priority" json:"unhealthy_priority"`
	// Version is the VRRP version the instance speaks: 3 (RFC 5798, the
	// default) or 2 (RFC 3768, IPv4 only, advert_interval in whole
	// seconds), keepalived's default, for a pair migrated one box at a
	// time.
	Version int `mapstructure:"version" json:"version"`
	// Authentication is VRRPv2's simple-text password (keepalived's
	// auth_type PASS); VRRPv3 has none.
	Authentication *VRRPAuth `mapstructure:"authentication" json:"authentication,omitempty"`
}

// VRRPAuth is a VRRPv2 instance's authentication.
type VRRPAuth struct {
	// Type is "pass" (simple text; keepalived's PASS).
	Type string `mapstructure:"type" json:"type"`
	// Password is sent in the clear in every advertisement: 1..8 bytes
	// (keepalived sends at most 8 too).
	Password string `mapstructure:"password" json:"password"`
}

// DNS configures the health-aware authoritative DNS server. It runs in mode
// dns, or beside another mode (usually vrrp) when Enabled.
type DNS struct {
	Enabled bool `mapstructure:"enabled" json:"enabled"`
	// Listen addresses, "addr:port", UDP and TCP.
	Listen []netip.AddrPort `mapstructure:"listen" json:"listen"`
	// Zone is the delegated zone, e.g. "lb.example.com.".
	Zone string `mapstructure:"zone" json:"zone"`
	// NS are the zone's name servers (one per director that runs DNS).
	NS []string `mapstructure:"ns" json:"ns"`
	// Hostmaster is the SOA mailbox, e.g. "hostmaster.example.com.".
	Hostmaster string `mapstructure:"hostmaster" json:"hostmaster"`
	// TTL of the answers; short so clients follow failovers.
	TTL   time.Duration `mapstructure:"ttl" json:"ttl"`
	Names []DNSName     `mapstructure:"names" json:"names"`
	// Glue are the addresses of the zone's own name servers (NS names
	// inside the zone): answered as A and AAAA, and given beside the NS
	// records, so that the zone's name servers resolve from the zone.
	Glue []DNSGlue `mapstructure:"glue" json:"glue,omitempty"`
}

// DNSGlue is one in-zone name server's addresses.
type DNSGlue struct {
	// Name is one of the NS names ("ns1" relative to the zone, or
	// fully qualified).
	Name      string       `mapstructure:"name" json:"name"`
	Addresses []netip.Addr `mapstructure:"addresses" json:"addresses"`
}

// DNSName is one name served round-robin over the VIPs that healthy
// directors hold.
type DNSName struct {
	// Name relative to the zone ("www") or fully qualified in it.
	Name string       `mapstructure:"name" json:"name"`
	VIPs []netip.Addr `mapstructure:"vips" json:"vips"`
}

// API is the local control API that anyctl talks to.
type API struct {
	// Socket is a unix socket, mode 0600, owned by root.
	Socket string `mapstructure:"socket" json:"socket"`
	// TCP is an optional remote listener; off unless Listen is set.
	TCP APITCP `mapstructure:"tcp" json:"tcp"`
	// Metrics is where Prometheus scrapes /metrics over plain HTTP, e.g.
	// "127.0.0.1:9477"; off unless set. (The unix socket serves
	// /metrics too.)
	Metrics netip.AddrPort `mapstructure:"metrics" json:"metrics,omitzero"`
}

// APITCP is the optional TLS listener of the API.
type APITCP struct {
	Listen netip.AddrPort `mapstructure:"listen" json:"listen,omitzero"`
	Cert   string         `mapstructure:"cert" json:"cert,omitempty"`
	Key    string         `mapstructure:"key" json:"key,omitempty"`
	// ClientCA verifies client certificates (mutual TLS).
	ClientCA string `mapstructure:"client_ca" json:"client_ca,omitempty"`
	// TokenFile holds a bearer token accepted instead of a client certificate.
	TokenFile string `mapstructure:"token_file" json:"token_file,omitempty"`
}

// Health holds the defaults of the real-server checks and the director's
// own (self) health checks.
type Health struct {
	Interval time.Duration `mapstructure:"interval" json:"interval"`
	Timeout  time.Duration `mapstructure:"timeout" json:"timeout"`
	Rise     int           `mapstructure:"rise" json:"rise"`
	Fall     int           `mapstructure:"fall" json:"fall"`
	// Concurrency caps the probes in flight at once.
	Concurrency int `mapstructure:"concurrency" json:"concurrency"`
	// Verdict says whose checks decide a backend's health in this
	// director's table: "cluster" (the default), the directors' checks by
	// majority, so that every director holds the same table (and mh picks
	// the same real server everywhere) however one director's checks
	// err; or "local", this director's own checks alone.
	Verdict string `mapstructure:"verdict" json:"verdict"`
	// LocalHold is, with verdict cluster, how long this director's checks
	// may hold a backend down that the cluster holds up before this
	// director takes it out of its own table anyway (its path to that
	// backend may be broken).
	LocalHold time.Duration `mapstructure:"local_hold" json:"local_hold"`
	Self      SelfHealth    `mapstructure:"self" json:"self"`
}

// Health verdicts.
const (
	VerdictCluster = "cluster"
	VerdictLocal   = "local"
)

// SelfHealth decides whether this director may announce at all.
type SelfHealth struct {
	// Uplink is the interface towards the switches; down means unhealthy.
	Uplink string      `mapstructure:"uplink" json:"uplink,omitempty"`
	Checks []SelfCheck `mapstructure:"checks" json:"checks,omitempty"`
}

// SelfCheck is an operator-defined local check (exec, http, https or tcp).
type SelfCheck struct {
	Name string `mapstructure:"name" json:"name"`
	// Target is "host:port" for tcp/http/https checks.
	Target string `mapstructure:"target" json:"target,omitempty"`
	Check  `mapstructure:",squash"`
}

// Protocols of a virtual service.
const (
	ProtoTCP  = "tcp"
	ProtoUDP  = "udp"
	ProtoSCTP = "sctp"
)

// Forwarding methods.
const (
	ForwardDR  = "dr"
	ForwardNAT = "nat"
	ForwardTUN = "tun"
)

// Backend-down policies.
const (
	OnDownWeightZero = "weight0"
	OnDownRemove     = "remove"
)

// Service is one virtual service: a VIP and port (or a firewall mark) that
// IPVS balances over Backends. Services are the cluster-wide part of the
// config.
type Service struct {
	Name string     `mapstructure:"name" json:"name"`
	VIP  netip.Addr `mapstructure:"vip" json:"vip"`
	// Protocol is tcp, udp or sctp; ignored by the kernel for fwmark services.
	Protocol string `mapstructure:"protocol" json:"protocol"`
	Port     int    `mapstructure:"port" json:"port,omitempty"`
	// FWMark selects packets by firewall mark instead of VIP and port; the
	// VIP is still what is announced.
	FWMark      uint32      `mapstructure:"fwmark" json:"fwmark,omitempty"`
	Scheduler   string      `mapstructure:"scheduler" json:"scheduler"`
	Flags       []string    `mapstructure:"flags" json:"flags,omitempty"`
	Forwarding  string      `mapstructure:"forwarding" json:"forwarding"`
	Tunnel      Tunnel      `mapstructure:"tunnel" json:"tunnel,omitzero"`
	Persistence Persistence `mapstructure:"persistence" json:"persistence,omitzero"`
	// Quorum is the number of healthy backends below which the VIP is withdrawn.
	Quorum int `mapstructure:"quorum" json:"quorum"`
	// OnDown is what a failed backend becomes: weight0 (default; existing
	// connections drain) or remove.
	OnDown string `mapstructure:"on_down" json:"on_down"`
	// DrainTimeout is how long a backend removed from the config stays at
	// weight 0 before it is deleted; 0 deletes it at once.
	DrainTimeout time.Duration `mapstructure:"drain_timeout" json:"drain_timeout"`
	Backends     []Backend     `mapstructure:"backends" json:"backends"`
	Health       Check         `mapstructure:"health" json:"health"`
}

// Tunnel is the encapsulation of forwarding tun. Only ipip is supported
// today; the fields for IPVS's gue and gre encapsulation are kept so that
// a config naming them gets a clear error.
type Tunnel struct {
	// Type is ipip (default).
	Type string `mapstructure:"type" json:"type,omitempty"`
	// Port is the GUE destination port (not supported).
	Port int `mapstructure:"port" json:"port,omitempty"`
	// Checksum is none (default); csum and remcsum are for gue and gre.
	Checksum string `mapstructure:"checksum" json:"checksum,omitempty"`
}

// Persistence keeps a client on the same backend for Timeout.
type Persistence struct {
	Timeout time.Duration `mapstructure:"timeout" json:"timeout,omitempty"`
	// Netmask groups clients by prefix length (32/128 = per address).
	Netmask int `mapstructure:"netmask" json:"netmask,omitempty"`
}

// Backend is one real server of a service.
type Backend struct {
	Address netip.Addr `mapstructure:"address" json:"address"`
	// Port defaults to the service's port.
	Port   int `mapstructure:"port" json:"port,omitempty"`
	Weight int `mapstructure:"weight" json:"weight"`
	// Forwarding overrides the service's forwarding method.
	Forwarding     string `mapstructure:"forwarding" json:"forwarding,omitempty"`
	UpperThreshold uint32 `mapstructure:"upper_threshold" json:"upper_threshold,omitempty"`
	LowerThreshold uint32 `mapstructure:"lower_threshold" json:"lower_threshold,omitempty"`
}

// Check types.
const (
	CheckNone  = "none"
	CheckTCP   = "tcp"
	CheckHTTP  = "http"
	CheckHTTPS = "https"
	CheckUDP   = "udp"
	CheckDNS   = "dns"
	CheckExec  = "exec"
)

// Check is a health check. Type picks which of the other fields apply.
type Check struct {
	Type string `mapstructure:"type" json:"type"`
	// Port probes another port than the backend's.
	Port     int           `mapstructure:"port" json:"port,omitempty"`
	Interval time.Duration `mapstructure:"interval" json:"interval"`
	Timeout  time.Duration `mapstructure:"timeout" json:"timeout"`
	Rise     int           `mapstructure:"rise" json:"rise"`
	Fall     int           `mapstructure:"fall" json:"fall"`
	// ThroughVIP checks the service on the VIP the real server holds on its
	// loopback (DR and TUN), not on the real server's own address.
	ThroughVIP bool `mapstructure:"through_vip" json:"through_vip,omitempty"`

	// tcp and udp
	Send   string `mapstructure:"send" json:"send,omitempty"`
	Expect string `mapstructure:"expect" json:"expect,omitempty"`

	// http and https
	Method          string   `mapstructure:"method" json:"method,omitempty"`
	Path            string   `mapstructure:"path" json:"path,omitempty"`
	Host            string   `mapstructure:"host" json:"host,omitempty"`
	Status          []string `mapstructure:"status" json:"status,omitempty"`
	Body            string   `mapstructure:"body" json:"body,omitempty"`
	FollowRedirects bool     `mapstructure:"follow_redirects" json:"follow_redirects,omitempty"`
	// https only
	ServerName string `mapstructure:"server_name" json:"server_name,omitempty"`
	Insecure   bool   `mapstructure:"insecure" json:"insecure,omitempty"`
	CACert     string `mapstructure:"ca_cert" json:"ca_cert,omitempty"`
	ClientCert string `mapstructure:"client_cert" json:"client_cert,omitempty"`
	ClientKey  string `mapstructure:"client_key" json:"client_key,omitempty"`

	// dns
	Query     string `mapstructure:"query" json:"query,omitempty"`
	QueryType string `mapstructure:"query_type" json:"query_type,omitempty"`
	Transport string `mapstructure:"transport" json:"transport,omitempty"`
	Rcode     string `mapstructure:"rcode" json:"rcode,omitempty"`
	Answer    string `mapstructure:"answer" json:"answer,omitempty"`

	// exec
	Command []string `mapstructure:"command" json:"command,omitempty"`
}
