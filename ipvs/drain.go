package ipvs

import (
	"maps"
	"slices"
	"time"
)

// Drainer turns the removal of a destination into a graceful drain: a
// destination that want no longer has is first kept at weight 0 (no new
// connections, existing ones continue) and is only left out of want, so
// that Diff deletes it, once its connections have ended or its service's
// DrainTimeout has passed.
//
// For an order-sensitive scheduler (mh, sh, dh) the drain always lasts
// DrainTimeout: a destination at weight 0 keeps its place in mh's lookup
// table and a deleted one does not, so a director that deleted it when
// its own connections ended (a standby has none) would hold another
// table than the directors still draining, and send some of the flows
// that move to it to other real servers. Every director starts the drain
// when the change reaches it, within moments of the others, and deletes
// at the same time after it.
//
// It is not safe for concurrent use; the owner calls it from one loop.
type Drainer struct {
	since map[drainKey]time.Time
}

type drainKey struct {
	svc  ServiceKey
	dest DestKey
}

// NewDrainer returns a Drainer with nothing draining.
func NewDrainer() *Drainer {
	return &Drainer{since: map[drainKey]time.Time{}}
}

// Draining returns how many destinations are being drained.
func (d *Drainer) Draining() int { return len(d.since) }

// DrainingServices returns the services with a destination being drained,
// sorted: those whose connection counters decide when a drain ends.
func (d *Drainer) DrainingServices() []ServiceKey {
	set := map[ServiceKey]bool{}
	for k := range d.since {
		set[k.svc] = true
	}
	return slices.SortedFunc(maps.Keys(set), ServiceKey.Compare)
}

// Adjust returns want with the destinations of have that are still
// draining put back at weight 0, each in its place in have's order (which
// order-sensitive schedulers need). want is not modified.
func (d *Drainer) Adjust(have, want Table, now time.Time) Table {
	hidx := have.Index()
	out := Table{Services: make([]Service, len(want.Services))}
	live := map[drainKey]bool{}
	for i := range want.Services {
		ws := want.Services[i]
		ws.Destinations = slices.Clone(ws.Destinations)
		hs, ok := hidx[ws.ServiceKey]
		if !ok || ws.DrainTimeout <= 0 {
			out.Services[i] = ws
			continue
		}
		inWant := map[DestKey]bool{}
		for _, x := range ws.Destinations {
			inWant[x.DestKey] = true
		}
		for j, hd := range hs.Destinations {
			if inWant[hd.DestKey] {
				continue
			}
			k := drainKey{ws.ServiceKey, hd.DestKey}
			start, draining := d.since[k]
			if !draining {
				start = now
			}
			idle := hd.ActiveConns+hd.InactiveConns == 0
			switch {
			case draining && idle && hd.Weight == 0 && !OrderSensitive(ws.Scheduler):
				continue // drained: let Diff delete it
			case now.Sub(start) >= ws.DrainTimeout:
				continue // out of time
			}
			d.since[k] = start
			live[k] = true
			kept := hd
			kept.Weight = 0
			kept.ActiveConns, kept.InactiveConns = 0, 0
			ws.Destinations = insertAfterPredecessor(ws.Destinations, hs.Destinations[:j], kept)
		}
		out.Services[i] = ws
	}
	for k := range d.since {
		if !live[k] {
			delete(d.since, k)
		}
	}
	return out
}

// insertAfterPredecessor inserts x into list right after the last of
// before (x's predecessors in the old order) that list holds, or first.
func insertAfterPredecessor(list []Destination, before []Destination, x Destination) []Destination {
	for _, p := range slices.Backward(before) {
		if i := slices.IndexFunc(list, func(d Destination) bool { return d.DestKey == p.DestKey }); i >= 0 {
			return slices.Insert(list, i+1, x)
		}
	}
	return slices.Insert(list, 0, x)
}
