package ipvs

import (
	"fmt"
	"slices"
	"strings"
)

// OpKind is what an Op does.
type OpKind int

// Operation kinds, in the order a Plan applies them.
const (
	AddService OpKind = iota
	AddDest
	UpdateService
	UpdateDest
	DelDest
	DelService
)

func (k OpKind) String() string {
	return [...]string{"add-service", "add-dest", "update-service", "update-dest", "del-dest", "del-service"}[k]
}

// Op is one IPVS operation: one netlink request.
type Op struct {
	Kind OpKind
	// Service is the service operated on, or the destination's service;
	// its Destinations are not used.
	Service Service
	// Dest is the destination of AddDest, UpdateDest and DelDest.
	Dest Destination
	// Reorder marks the DelDest and AddDest of a destination that is
	// removed and added again so that an order-sensitive scheduler sees
	// the destinations in the wanted order.
	Reorder bool
}

func (o Op) String() string {
	switch o.Kind {
	case AddService, UpdateService, DelService:
		s := fmt.Sprintf("%s %s", o.Kind, o.Service.ServiceKey)
		if o.Kind != DelService {
			s += fmt.Sprintf(" sched %s flags %#x timeout %d", o.Service.Scheduler, uint32(o.Service.Flags&managedFlags), o.Service.Timeout)
		}
		return s
	default:
		s := fmt.Sprintf("%s %s -> %s", o.Kind, o.Service.ServiceKey, o.Dest.DestKey)
		if o.Kind != DelDest {
			s += fmt.Sprintf(" %s weight %d", o.Dest.Forward, o.Dest.Weight)
		}
		if o.Reorder {
			s += " (reorder)"
		}
		return s
	}
}

// Plan is an ordered list of operations that turns one table into another.
type Plan []Op

func (p Plan) String() string {
	var b strings.Builder
	for _, o := range p {
		b.WriteString(o.String())
		b.WriteByte('\n')
	}
	return b.String()
}

// Diff returns the minimal plan that turns have into want. It never flushes
// and never replaces what it can edit: a changed weight, forwarding method
// or threshold is an UpdateDest, a changed scheduler, flag or persistence an
// UpdateService. The plan runs in this order: new services; new
// destinations; edits; removed destinations; removed services (a removed
// service takes its destinations with it).
//
// For order-sensitive schedulers (OrderSensitive) the destinations end up
// in the kernel in want's order: new ones are added in that order, and if
// the existing ones are not a prefix of it, the ones out of place are
// deleted and each added again right after its deletion (a Reorder pair),
// in want's order among the additions of their service.
//
// Diff is pure; have and want are not modified. Destinations of have that
// want lacks are deleted at once: graceful draining is the caller's (see
// Drainer), which keeps such destinations in want at weight 0.
func Diff(have, want Table) Plan {
	hidx := have.Index()
	widx := want.Index()
	w := want.Sorted()
	h := have.Sorted()

	var adds, dests, edits, dels, svcDels Plan
	for i := range w.Services {
		ws := &w.Services[i]
		settings := *ws
		settings.Destinations = nil
		hs, ok := hidx[ws.ServiceKey]
		if !ok {
			adds = append(adds, Op{Kind: AddService, Service: settings})
			for _, d := range ws.Destinations {
				dests = append(dests, Op{Kind: AddDest, Service: settings, Dest: d})
			}
			continue
		}
		if !hs.sameSettings(ws) {
			edits = append(edits, Op{Kind: UpdateService, Service: settings})
		}

		wantDest := newDestIndex(ws.Destinations)
		haveDest := newDestIndex(hs.Destinations)
		var kept []DestKey // have's destinations that stay, in have's order
		order := OrderSensitive(ws.Scheduler)
		if order {
			kept = make([]DestKey, 0, len(hs.Destinations))
		}
		for j := range hs.Destinations {
			d := &hs.Destinations[j]
			if wantDest.get(d.DestKey) == nil {
				dels = append(dels, Op{Kind: DelDest, Service: settings, Dest: *d})
			} else if order {
				kept = append(kept, d.DestKey)
			}
		}

		var readd map[DestKey]bool
		if order {
			// The kept destinations must be a prefix of want's order;
			// everything of them after the common prefix goes again.
			p := 0
			for p < len(kept) && kept[p] == ws.Destinations[p].DestKey {
				p++
			}
			for _, k := range kept[p:] {
				if readd == nil {
					readd = map[DestKey]bool{}
				}
				readd[k] = true
			}
		}
		for _, d := range ws.Destinations {
			hd := haveDest.get(d.DestKey)
			switch {
			case hd == nil:
				dests = append(dests, Op{Kind: AddDest, Service: settings, Dest: d})
			case readd[d.DestKey]:
				// Deleted and added again right after, in want's order
				// (each lands at the end of the kernel's list). The
				// kernel keeps a deleted destination that connections
				// use and takes it back on the add, so its connections
				// go on, but a packet of theirs that arrives between
				// the two finds it missing. The batcher sends the pair
				// in one message (the kernel's own work in between, mh's
				// table rebuilt, is the whole gap) and Kernel.Apply
				// keeps expire_nodest_conn off meanwhile, so such a
				// packet is dropped, not its connection reset.
				dests = append(dests,
					Op{Kind: DelDest, Service: settings, Dest: *hd, Reorder: true},
					Op{Kind: AddDest, Service: settings, Dest: d, Reorder: true})
			case !hd.sameSettings(&d):
				edits = append(edits, Op{Kind: UpdateDest, Service: settings, Dest: d})
			}
		}
	}
	for i := range h.Services {
		hs := &h.Services[i]
		if _, ok := widx[hs.ServiceKey]; !ok {
			settings := *hs
			settings.Destinations = nil
			svcDels = append(svcDels, Op{Kind: DelService, Service: settings})
		}
	}
	return slices.Concat(adds, dests, edits, dels, svcDels)
}

// destIndex finds a service's destinations by key. A loop turn diffs every
// service, so the usual handful of destinations is scanned (nothing
// allocated); only a large service gets a map.
type destIndex struct {
	ds []Destination
	m  map[DestKey]*Destination
}

// destScanMax is the most destinations looked up by scanning.
const destScanMax = 32

func newDestIndex(ds []Destination) destIndex {
	x := destIndex{ds: ds}
	if len(ds) > destScanMax {
		x.m = make(map[DestKey]*Destination, len(ds))
		for j := range ds {
			x.m[ds[j].DestKey] = &ds[j]
		}
	}
	return x
}

// get returns the destination with key k, or nil.
func (x destIndex) get(k DestKey) *Destination {
	if x.m != nil {
		return x.m[k]
	}
	for j := range x.ds {
		if x.ds[j].DestKey == k {
			return &x.ds[j]
		}
	}
	return nil
}
