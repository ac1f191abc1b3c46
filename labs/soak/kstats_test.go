package soak

import (
	"testing"
)

func TestParseProc(t *testing.T) {
	vals := map[string]uint64{}
	parseProc("rs1", "netstat", []byte("TcpExt: SyncookiesSent ListenOverflows ListenDrops\nTcpExt: 0 7 9\nIpExt: InNoRoutes\nIpExt: 3\n"), vals)
	parseProc("rs1", "snmp", []byte("Ip: Forwarding\nIp: 1\nTcp: RtoAlgorithm RetransSegs OutRsts\nTcp: 1 42 5\n"), vals)
	parseProc("d1", "dev", []byte("Inter-|   Receive\n face |bytes packets errs drop fifo frame compressed multicast|bytes packets errs drop fifo colls carrier compressed\n    lo: 1 2 0 0 0 0 0 0 1 2 0 0 0 0 0 0\n  eth0: 100 10 0 3 0 0 0 0 200 20 0 4 0 0 0 0\n"), vals)
	parseProc("vm", "softnet", []byte("0000aaaa 00000002 00000010 00 00\n0000bbbb 00000001 00000001 00 00\n"), vals)
	parseProc("vm", "psi", []byte("some avg10=0.00 avg60=0.00 avg300=0.00 total=25000\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"), vals)
	want := map[string]uint64{
		"rs1 ListenOverflows": 7, "rs1 ListenDrops": 9, "rs1 RetransSegs": 42, "rs1 OutRsts": 5,
		"d1 eth0.rx_drop": 3, "d1 eth0.tx_drop": 4,
		"vm softnet.dropped": 3, "vm softnet.squeezed": 17, "vm cpu_pressure_ms": 25,
	}
	for k, v := range want {
		if vals[k] != v {
			t.Errorf("%s = %d, want %d (all: %v)", k, vals[k], v, vals)
		}
	}
	if len(vals) != len(want) {
		t.Errorf("got %d counters, want %d: %v", len(vals), len(want), vals)
	}
}

// A process's CPU is followed by PID from sample to sample: one that
// restarts (a daemon killed and started again) keeps its share, one first
// seen is charged what it used since it started.
func TestCPUAcct(t *testing.T) {
	var c cpuAcct
	sample := func(procs map[string]procTicks) *cpuSample { return &cpuSample{procs: procs} }
	c.add(sample(map[string]procTicks{"1": {"anycastd", 100}, "9": {"bird", 500}}))
	c.add(sample(map[string]procTicks{"1": {"anycastd", 150}, "2": {"soak (traffic)", 30}, "9": {"bird", 500}}))
	c.add(sample(map[string]procTicks{"2": {"soak (traffic)", 50}, "3": {"anycastd", 20}, "9": {"bird", 510}}))
	want := map[string]uint64{"anycastd": 70, "soak (traffic)": 50, "bird": 10}
	for k, v := range want {
		if c.byLabel[k] != v {
			t.Errorf("%s: %d ticks, want %d (all: %v)", k, c.byLabel[k], v, c.byLabel)
		}
	}
}
