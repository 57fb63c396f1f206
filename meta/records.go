package meta

import (
	"encoding/json"
	"fmt"
	"time"
)

// Tags with a meaning here. Talos's keep Talos's meaning; stagehand's start
// at 0x40.
const (
	TagTalosUpgrade        Tag = 0x06 // Talos: previous boot label, for revert
	TagTalosStagedImageRef Tag = 0x07 // Talos: staged upgrade image reference
	TagTalosStagedOptions  Tag = 0x08 // Talos: staged upgrade install options (JSON)
	TagGeneration          Tag = 0x40 // u64 big-endian, set by Commit
	TagStaged              Tag = 0x41 // JSON Staged
	TagSlots               Tag = 0x42 // JSON Slots
	TagTransitions         Tag = 0x43 // JSON []Transition, the last MaxTransitions
)

// MaxTransitions bounds the transition ring.
const MaxTransitions = 16

var tagNames = map[Tag]string{
	TagTalosUpgrade:        "talos-upgrade",
	TagTalosStagedImageRef: "talos-staged-image-ref",
	TagTalosStagedOptions:  "talos-staged-install-options",
	TagGeneration:          "generation",
	TagStaged:              "staged",
	TagSlots:               "slots",
	TagTransitions:         "transitions",
}

// TagName is the name of a known tag, or "" for others.
func TagName(t Tag) string { return tagNames[t] }

// TagByName returns the tag called name.
func TagByName(name string) (Tag, bool) {
	for t, n := range tagNames {
		if n == name {
			return t, true
		}
	}
	return 0, false
}

// Slot names one of the two boot slots: "a" or "b".
type Slot string

// The slots.
const (
	SlotA Slot = "a"
	SlotB Slot = "b"
)

// Other returns the slot that is not s.
func (s Slot) Other() Slot {
	if s == SlotA {
		return SlotB
	}
	return SlotA
}

func (s Slot) valid() bool { return s == SlotA || s == SlotB }

// Artifact is one file of a staged payload, as it lies in STAGE.
type Artifact struct {
	Name   string `json:"name"`
	Offset int64  `json:"offset"` // bytes from the start of the STAGE partition
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"` // hex
}

// Staged is the record of a staged payload (tag 0x41).
type Staged struct {
	Image  string `json:"image"`  // reference as given
	Digest string `json:"digest"` // resolved manifest digest
	// SignedBy is the fingerprint (SHA-256 of the PKIX DER, hex) of the key
	// whose cosign signature was verified before staging; several,
	// comma-separated, when --verify-key and a policy rule were met by
	// different keys; empty when no signature was checked.
	SignedBy string `json:"signed_by,omitempty"`
	// Firmware is what staging found of the payload's kernel or UKI
	// against the firmware's Secure Boot databases; nil when Secure Boot
	// was off.
	Firmware  *FirmwareCheck `json:"firmware,omitempty"`
	Target    Slot           `json:"target"` // slot the payload goes to
	Time      time.Time      `json:"time"`
	Artifacts []Artifact     `json:"artifacts"`
	// Transfer is where staging found the image's bytes; nil in records
	// written before it was kept.
	Transfer *Transfer `json:"transfer,omitempty"`
}

// Transfer is what a staging read from the image's source (a registry,
// an OCI layout, an archive) and what it copied from bytes the machine
// held (delta staging: the slots' files, the payload STAGE held).
type Transfer struct {
	Fetched int64 `json:"fetched"`          // bytes of blobs read from the source
	Reused  int64 `json:"reused,omitempty"` // bytes copied from the machine's own, hash checked
	// Full says why the image's bytes were all read from the source ("no
	// delta index", "asked to", why a delta failed); "" for a delta.
	Full string `json:"full,omitempty"`
}

// FirmwareCheck is a payload checked at staging against db and dbx, as
// the firmware checks it under Secure Boot. prestage kexecs it only while
// db and dbx are the ones it was checked against (their sha256 here):
// anything else goes through the firmware, which checks it itself.
type FirmwareCheck struct {
	Trusted bool   `json:"trusted"`          // the firmware would start it
	Reason  string `json:"reason,omitempty"` // why not (staged with --allow-untrusted)
	DB      string `json:"db"`               // sha256 of db's data, "" when unset
	DBX     string `json:"dbx"`
}

func (s *Staged) validate() error {
	if !s.Target.valid() {
		return fmt.Errorf("target slot %q is not a or b", s.Target)
	}
	for _, a := range s.Artifacts {
		if a.Offset < 0 || a.Size < 0 || a.Offset > 1<<62-a.Size {
			return fmt.Errorf("artifact %q: offset %d size %d out of range", a.Name, a.Offset, a.Size)
		}
	}
	return nil
}

// Phase is where the boot flow stands.
type Phase string

// The phases of DESIGN.md's boot flow.
const (
	PhaseIdle     Phase = "idle"
	PhaseStaged   Phase = "staged"
	PhaseApplying Phase = "applying"
	PhaseTrial    Phase = "trial"
)

// SlotState is what is known of one slot.
type SlotState struct {
	State   string `json:"state"` // "", "good", "trial", "bad"
	Version string `json:"version,omitempty"`
	Digest  string `json:"digest,omitempty"`
	Reason  string `json:"reason,omitempty"` // why it is bad
}

// Slots is the record of the slot states (tag 0x42).
type Slots struct {
	Phase     Phase     `json:"phase"`
	Active    Slot      `json:"active"`             // the default slot
	Previous  Slot      `json:"previous,omitempty"` // the slot active before
	Trial     Slot      `json:"trial,omitempty"`
	TriesLeft int       `json:"tries_left,omitempty"`
	A         SlotState `json:"a"`
	B         SlotState `json:"b"`
	// LoaderDefault is the slot the bootloader was last made to boot by
	// default, its entry blessed and no boot-once left, written once those
	// changes were synced. While it is Active and nothing is staged or on
	// trial, a boot of the active slot need not look at the bootloader.
	LoaderDefault Slot `json:"loader_default,omitempty"`
	// Rearmed counts the times the trial was armed again because the
	// machine came back to the active slot without any boot of the trial
	// slot (its boot-once lost in a power cut, or the kexec never made).
	Rearmed int `json:"rearmed,omitempty"`
	// Pending is the active slot while it is "confirmed, firmware start
	// pending": confirmed in a boot reached by kexec, so that neither the
	// firmware nor the bootloader has started it yet. Until a boot the
	// firmware starts from its entry completes the blessing, its entry
	// keeps its boot counter, Previous stays the bootloader's default and
	// the slot boots once at the next firmware boot; a firmware boot that
	// comes back to Previous instead rolls it back.
	Pending Slot `json:"pending,omitempty"`
	// PendingDone is how many firmware starts of Pending's entry its
	// boot counter had recorded when it became pending: a larger count at
	// a boot of Previous means the firmware tried it and came back.
	PendingDone int `json:"pending_done,omitempty"`
}

// State is slot sl's state, a pointer into s: A unless sl is b.
func (s *Slots) State(sl Slot) *SlotState {
	if sl == SlotB {
		return &s.B
	}
	return &s.A
}

func (s *Slots) validate() error {
	switch s.Phase {
	case PhaseIdle, PhaseStaged, PhaseApplying, PhaseTrial:
	default:
		return fmt.Errorf("unknown phase %q", s.Phase)
	}
	if s.Pending != "" && s.Pending != s.Active {
		return fmt.Errorf("pending slot %q is not the active slot %q", s.Pending, s.Active)
	}
	for _, sl := range []Slot{s.Active, s.Previous, s.Trial, s.LoaderDefault, s.Pending} {
		if sl != "" && !sl.valid() {
			return fmt.Errorf("slot %q is not a or b", sl)
		}
	}
	if s.TriesLeft < 0 {
		return fmt.Errorf("tries left %d is negative", s.TriesLeft)
	}
	if s.Rearmed < 0 {
		return fmt.Errorf("rearmed %d is negative", s.Rearmed)
	}
	return nil
}

// Transition is one entry of the ring (tag 0x43): what changed and why.
type Transition struct {
	Time   time.Time `json:"time"`
	From   Phase     `json:"from"`
	To     Phase     `json:"to"`
	Slot   Slot      `json:"slot,omitempty"`
	Reason string    `json:"reason"`
}

type validator interface{ validate() error }

func getRecord(b *Block, t Tag, v any) (bool, error) {
	raw, ok := b.Get(t)
	if !ok {
		return false, nil
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return true, fmt.Errorf("decoding %s record (tag 0x%02x): %w", TagName(t), t, err)
	}
	if vv, ok := v.(validator); ok {
		if err := vv.validate(); err != nil {
			return true, fmt.Errorf("decoding %s record (tag 0x%02x): %w", TagName(t), t, err)
		}
	}
	return true, nil
}

func setRecord(b *Block, t Tag, v any) error {
	if vv, ok := v.(validator); ok {
		if err := vv.validate(); err != nil {
			return fmt.Errorf("encoding %s record: %w", TagName(t), err)
		}
	}
	raw, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encoding %s record: %w", TagName(t), err)
	}
	return b.Set(t, raw)
}

// Staged returns the staged payload record, if any.
func (b *Block) Staged() (*Staged, bool, error) {
	var s Staged
	ok, err := getRecord(b, TagStaged, &s)
	if !ok || err != nil {
		return nil, ok, err
	}
	return &s, true, nil
}

// SetStaged stores the staged payload record.
func (b *Block) SetStaged(s *Staged) error { return setRecord(b, TagStaged, s) }

// Slots returns the slot states; a META without them is idle on slot a.
func (b *Block) Slots() (*Slots, error) {
	s := Slots{Phase: PhaseIdle, Active: SlotA}
	if _, err := getRecord(b, TagSlots, &s); err != nil {
		return nil, err
	}
	return &s, nil
}

// SetSlots stores the slot states.
func (b *Block) SetSlots(s *Slots) error { return setRecord(b, TagSlots, s) }

// Transitions returns the ring, oldest first.
func (b *Block) Transitions() ([]Transition, error) {
	var ts []Transition
	_, err := getRecord(b, TagTransitions, &ts)
	return ts, err
}

// AddTransition appends t to the ring, dropping the oldest beyond
// MaxTransitions.
func (b *Block) AddTransition(t Transition) error {
	ts, err := b.Transitions()
	if err != nil {
		ts = nil // a damaged ring is replaced rather than blocking the state machine
	}
	ts = append(ts, t)
	if len(ts) > MaxTransitions {
		ts = ts[len(ts)-MaxTransitions:]
	}
	return setRecord(b, TagTransitions, ts)
}

// CheckValue tells whether v may be stored under t by hand: the generation
// belongs to the store, and stagehand's records must decode.
func CheckValue(t Tag, v []byte) error {
	if t == TagGeneration {
		return fmt.Errorf("tag 0x%02x (generation) is managed by the store and cannot be set or deleted", t)
	}
	b := &Block{}
	if err := b.Set(t, v); err != nil {
		return err
	}
	var err error
	switch t {
	case TagStaged:
		_, _, err = b.Staged()
	case TagSlots:
		_, err = b.Slots()
	case TagTransitions:
		_, err = b.Transitions()
	}
	return err
}
