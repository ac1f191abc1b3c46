package cluster

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/anycastd/anycastd/configs"
	"github.com/anycastd/anycastd/internal/atomicfile"
)

// Document is the cluster-wide part of the config (the services, with
// defaults filled in) as it travels between directors: versioned,
// attributed and authenticated with the cluster key.
type Document struct {
	// Version is a Lamport clock: a change made on any director gets one
	// more than the highest version that director has seen.
	Version uint64 `json:"version"`
	// Hash is the SHA-256 of Services (hex); it breaks ties between
	// concurrent changes with the same Version.
	Hash string `json:"hash"`
	// Author is the director where the change was made.
	Author string `json:"author"`
	// Time is when it was made (by the author's clock; informative only).
	Time time.Time `json:"time"`
	// Services is the JSON array of configs.Service.
	Services json.RawMessage `json:"services"`
	// Rollout, while in progress, stages Services: only the directors it
	// has reached apply them, the others keep Previous (whose hash is
	// PreviousHash). Once done it stays as the record of how the change
	// went, and Previous is gone.
	Rollout      *Rollout        `json:"rollout,omitempty"`
	Previous     json.RawMessage `json:"previous,omitempty"`
	PreviousHash string          `json:"previous_hash,omitempty"`
	// Tag is HMAC-SHA256 over everything above, keyed from the cluster
	// key; empty in an insecure cluster.
	Tag []byte `json:"tag,omitempty"`
}

// Rollout is a staged change of the services (see Document.Rollout): a
// warm standby first, then one active director, then the rest; each
// stage holds until the directors it reached report that the change left
// nothing worse off. A stage that makes something worse ends it: the
// document that ends it holds the previous services again, under a newer
// version, so every director applies them.
type Rollout struct {
	// ID is the version of the document that started the rollout.
	ID uint64 `json:"id"`
	// Stage is how far it has gone.
	Stage Stage `json:"stage"`
	// Reached are the directors that apply the new services, in the
	// order the stages added them.
	Reached []string `json:"reached,omitempty"`
	// Hold is how long a stage's directors run the new services before
	// they judge them (the checks' rise time).
	Hold time.Duration `json:"hold"`
	// Outcome is "" while the rollout is in progress; Reason says why it
	// was rolled back.
	Outcome Outcome `json:"outcome,omitempty"`
	Reason  string  `json:"reason,omitempty"`
	// Started is when it started, by its author's clock (informative).
	Started time.Time `json:"started"`
}

// Stage is how far a rollout has gone.
type Stage string

// The stages, in order.
const (
	// StageStandby: one warm standby (no traffic at risk).
	StageStandby Stage = "standby"
	// StageActive: and one active director.
	StageActive Stage = "active"
	// StageAll: every director.
	StageAll Stage = "all"
)

// Outcome is how a rollout ended.
type Outcome string

// The outcomes.
const (
	OutcomeRolledOut  Outcome = "rolled_out"
	OutcomeRolledBack Outcome = "rolled_back"
)

// InProgress reports whether d stages its services: some directors apply
// Previous.
func (d *Document) InProgress() bool {
	return d != nil && d.Rollout != nil && d.Rollout.Outcome == "" && d.Previous != nil
}

// Reached reports whether the director name applies d's Services (every
// director does unless a rollout is in progress and has not reached it).
func (d *Document) Reached(name string) bool {
	return !d.InProgress() || slices.Contains(d.Rollout.Reached, name)
}

// For returns the services the director name applies, and their hash.
func (d *Document) For(name string) ([]configs.Service, string, error) {
	if d.Reached(name) {
		ss, err := d.Decode()
		return ss, d.Hash, err
	}
	ss, err := decodeServices(d.Previous, d.PreviousHash, d)
	return ss, d.PreviousHash, err
}

// stateDigest orders documents of the same version and services that
// differ in their rollout state (two stages proposed at once in a split).
func (d *Document) stateDigest() string {
	if d.Rollout == nil && d.Previous == nil {
		return ""
	}
	b, _ := json.Marshal(d.Rollout)
	sum := sha256.Sum256(append(append(b, d.PreviousHash...), d.Previous...))
	return hex.EncodeToString(sum[:])
}

// Errors of received documents.
var (
	ErrUnauthenticated = errors.New("config document fails authentication")
	ErrCorrupt         = errors.New("config document is corrupt")
)

// NewDocument makes the document for services as version, signed with
// the primary key (none: unsigned, for an insecure cluster).
func NewDocument(services []configs.Service, version uint64, author string, now time.Time, primary []byte) (*Document, error) {
	if services == nil {
		services = []configs.Service{}
	}
	raw, err := json.Marshal(services)
	if err != nil {
		return nil, fmt.Errorf("encode services: %w", err)
	}
	sum := sha256.Sum256(raw)
	d := &Document{Version: version, Hash: hex.EncodeToString(sum[:]), Author: author,
		Time: now.UTC().Truncate(time.Millisecond), Services: raw}
	if primary != nil {
		d.Tag = d.mac(primary)
	}
	return d, nil
}

// sign sets d's tag with primary (none: unsigned) and returns d.
func (d *Document) sign(primary []byte) *Document {
	d.Tag = nil
	if primary != nil {
		d.Tag = d.mac(primary)
	}
	return d
}

// ServicesHash is the hash a document of services would have.
func ServicesHash(services []configs.Service) (string, error) {
	if services == nil {
		services = []configs.Service{}
	}
	raw, err := json.Marshal(services)
	if err != nil {
		return "", fmt.Errorf("encode services: %w", err)
	}
	sum := sha256.Sum256(raw)
	return hex.EncodeToString(sum[:]), nil
}

// IsZero reports whether d is the empty document (no config yet).
func (d *Document) IsZero() bool { return d == nil || d.Version == 0 }

// Newer reports whether d should replace old: a higher version, or the
// same version and a higher hash. Every director decides the same way, so
// they converge on one document.
func (d *Document) Newer(old *Document) bool {
	if old.IsZero() {
		return !d.IsZero()
	}
	if d.Version != old.Version {
		return d.Version > old.Version
	}
	if d.Hash != old.Hash {
		return d.Hash > old.Hash
	}
	return d.stateDigest() > old.stateDigest()
}

// Short is the first 12 hex digits of the hash, for people and metadata.
func (d *Document) Short() string {
	if d.IsZero() || len(d.Hash) < 12 {
		return ""
	}
	return d.Hash[:12]
}

// Decode returns the services of d after checking that they match its hash
// and that they are a valid services config.
func (d *Document) Decode() ([]configs.Service, error) {
	return decodeServices(d.Services, d.Hash, d)
}

// Check decodes what d carries: its services and, while a rollout is in
// progress, the previous ones, and the rollout's state.
func (d *Document) Check() error {
	if _, err := d.Decode(); err != nil {
		return err
	}
	if d.Rollout == nil && d.Previous == nil {
		return nil
	}
	if d.Rollout == nil {
		return fmt.Errorf("%w: previous services without a rollout", ErrCorrupt)
	}
	switch d.Rollout.Outcome {
	case "":
		if d.Previous == nil {
			return fmt.Errorf("%w: a rollout in progress without the previous services", ErrCorrupt)
		}
		switch d.Rollout.Stage {
		case StageStandby, StageActive, StageAll:
		default:
			return fmt.Errorf("%w: rollout stage %q", ErrCorrupt, d.Rollout.Stage)
		}
		if _, err := decodeServices(d.Previous, d.PreviousHash, d); err != nil {
			return fmt.Errorf("the rollout's previous services: %w", err)
		}
	case OutcomeRolledOut, OutcomeRolledBack:
	default:
		return fmt.Errorf("%w: rollout outcome %q", ErrCorrupt, d.Rollout.Outcome)
	}
	return nil
}

// decodeServices checks raw against hash and decodes it as d's.
func decodeServices(raw json.RawMessage, hash string, d *Document) ([]configs.Service, error) {
	sum := sha256.Sum256(raw)
	if hex.EncodeToString(sum[:]) != hash {
		return nil, fmt.Errorf("%w: services do not match the hash", ErrCorrupt)
	}
	var ss []configs.Service
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&ss); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	configs.CanonicalizeServices(ss)
	if err := configs.ValidateServices(ss); err != nil {
		return nil, fmt.Errorf("config document version %d from %s is invalid: %w", d.Version, d.Author, err)
	}
	// encoding/json grows slices by doubling: 10 backends end up in room
	// for 16. The decoded services are held for as long as the document
	// is applied, so they are copied into slices of their exact length.
	ss = slices.Clone(ss)
	for i := range ss {
		ss[i].Backends = slices.Clone(ss[i].Backends)
	}
	return ss, nil
}

// Verify checks the tag with each of keys (any one may have signed it,
// which is how keys rotate). With no keys (an insecure cluster) only an
// unsigned document is accepted: a signed one means the sender has a key
// this director lacks.
func (d *Document) Verify(keys [][]byte) error {
	if len(keys) == 0 {
		if len(d.Tag) != 0 {
			return fmt.Errorf("%w: signed, but this director has no cluster key", ErrUnauthenticated)
		}
		return nil
	}
	if len(d.Tag) == 0 {
		return fmt.Errorf("%w: unsigned (its author runs without a cluster key)", ErrUnauthenticated)
	}
	for _, k := range keys {
		if hmac.Equal(d.Tag, d.mac(k)) {
			return nil
		}
	}
	return fmt.Errorf("%w: signed with a key this director does not have", ErrUnauthenticated)
}

// mac computes the tag with a key derived from the cluster key, so that
// the gossip key itself is never used for two purposes.
func (d *Document) mac(clusterKey []byte) []byte {
	kd := hmac.New(sha256.New, clusterKey)
	kd.Write([]byte("anycastd config document v1"))
	m := hmac.New(sha256.New, kd.Sum(nil))
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], d.Version)
	m.Write(b[:])
	field := func(s []byte) {
		binary.BigEndian.PutUint64(b[:], uint64(len(s)))
		m.Write(b[:])
		m.Write(s)
	}
	field([]byte(d.Hash))
	field([]byte(d.Author))
	field([]byte(d.Time.UTC().Format(time.RFC3339Nano)))
	field(d.Services)
	if d.Rollout != nil || d.Previous != nil {
		// Only then: a document without them is tagged as before.
		r, _ := json.Marshal(d.Rollout)
		field(r)
		field([]byte(d.PreviousHash))
		field(d.Previous)
	}
	return m.Sum(nil)
}

// DecodeKeys turns the config's base64 keys into bytes (validated by
// configs).
func DecodeKeys(keys []string) ([][]byte, error) {
	out := make([][]byte, 0, len(keys))
	for i, k := range keys {
		b, err := base64.StdEncoding.DecodeString(k)
		if err != nil {
			return nil, fmt.Errorf("cluster.keys[%d]: not valid base64", i)
		}
		out = append(out, b)
	}
	return out, nil
}

// docFile is where the last applied document is kept in the state dir.
const docFile = "cluster-config.json"

// SaveDocument writes d to dir atomically (a crash leaves the old file or
// the new one, never half of one).
func SaveDocument(dir string, d *Document) error {
	// Not indented: that would re-indent Services and change its hash.
	b, err := json.Marshal(d)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	if err := atomicfile.Write(filepath.Join(dir, docFile), append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("save config document: %w", err)
	}
	return nil
}

// loadOption changes how LoadDocument checks what it reads.
type loadOption int

// withoutVerify skips the authentication (the content is still checked).
const withoutVerify loadOption = 1

// LoadDocument reads the document SaveDocument wrote; nil, nil when there
// is none. It is checked as one received from the network would be.
func LoadDocument(dir string, keys [][]byte, opts ...loadOption) (*Document, error) {
	path := filepath.Join(dir, docFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var d Document
	if err := json.Unmarshal(b, &d); err != nil {
		return nil, fmt.Errorf("%s: %w: %v", path, ErrCorrupt, err)
	}
	if !slices.Contains(opts, withoutVerify) {
		if err := d.Verify(keys); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
	}
	if err := d.Check(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &d, nil
}
