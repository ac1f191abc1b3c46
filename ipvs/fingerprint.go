package ipvs

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"maps"
	"time"
)

// Fingerprint is a short digest of what decides an order-sensitive
// scheduler's choice of real server for a new flow: the scheduler, its
// flags, and the destinations in the kernel's list order with their
// weights. The kernel fills mh's lookup table (and sh's and dh's hash
// buckets) by walking that list, so two directors whose fingerprints of
// a service agree send a flow to the same real server, and two whose
// fingerprints differ may not. It is "" for a service whose scheduler
// does not depend on the order (its choice is per director anyway).
//
// A destination at weight 0 counts as it is read: mh keeps its slots
// (filled with its last non-zero weight, which the kernel does not
// report), so a drained destination and a removed one give different
// tables and different fingerprints.
func Fingerprint(s *Service) string {
	if !OrderSensitive(s.Scheduler) {
		return ""
	}
	h := fnv.New64a()
	var b [8]byte
	h.Write([]byte(s.Scheduler))
	binary.BigEndian.PutUint32(b[:4], uint32(s.Flags&managedFlags))
	h.Write(b[:4])
	for _, d := range s.Destinations {
		a := d.Addr.As16()
		h.Write(a[:])
		binary.BigEndian.PutUint16(b[:2], d.Port)
		binary.BigEndian.PutUint32(b[2:6], uint32(d.Weight))
		h.Write(b[:6])
	}
	return fmt.Sprintf("%016x", h.Sum64())[:10]
}

// fingerprints returns the Fingerprint of every order-sensitive service m
// holds.
func (m *Memory) fingerprints() map[ServiceKey]string {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[ServiceKey]string{}
	for k, s := range m.services {
		if fp := Fingerprint(s); fp != "" {
			out[k] = fp
		}
	}
	return out
}

// fingerprint returns the Fingerprint of the service k ("": not held, or
// not order-sensitive).
func (m *Memory) fingerprint(k ServiceKey) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	if s, ok := m.services[k]; ok {
		return Fingerprint(s)
	}
	return ""
}

// Fingerprints returns the Fingerprint of every order-sensitive service
// the dataplane holds, as far as the Reconciler knows it: the last full
// read with every plan applied since, so a change made behind its back
// shows at the next full read (see SetFullRead and ReadInFull). nil when
// it does not know (before the first Reconcile, after a failed read or
// apply). The map is the caller's.
func (r *Reconciler) Fingerprints() map[ServiceKey]string {
	if r.fps == nil {
		return nil
	}
	return maps.Clone(r.fps)
}

// ReadInFull makes the next Reconcile read the whole table from the
// dataplane, as the full-read timer would: what differs from what the
// Reconciler believed is reported (Result.Drift) and repaired.
func (r *Reconciler) ReadInFull() { r.readAt = time.Time{} }

// updateFingerprints brings fps up to date after a Reconcile: all of them
// after a full read, else those of the services the plan touched.
func (r *Reconciler) updateFingerprints(res *Result) {
	if r.believed == nil {
		r.fps = nil
		return
	}
	if res.FullRead || r.fps == nil {
		r.fps = r.believed.fingerprints()
		return
	}
	for _, op := range res.Plan {
		k := op.Service.ServiceKey
		if fp := r.believed.fingerprint(k); fp != "" {
			r.fps[k] = fp
		} else {
			delete(r.fps, k)
		}
	}
}
