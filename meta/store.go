package meta

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
)

// Device holds the two copies: a META partition as a region of a disk, or a
// plain file. *os.File satisfies it.
type Device interface {
	io.ReaderAt
	io.WriterAt
	Sync() error
}

// CopyState describes one copy as Load found it.
type CopyState struct {
	Offset     int64  // byte offset of the copy in the partition
	Valid      bool   // decodes (a blank copy is valid and empty)
	Blank      bool   // all zeros: never written
	Generation uint64 // 0 for Talos-written and blank copies
	Err        error  // why the copy is invalid
}

// CorruptError is returned by Load when no copy is valid.
type CorruptError struct {
	Device string
	Copies [2]CopyState
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("META on %s is corrupt: copy 1: %v; copy 2: %v (restore it from a backup, or re-create it with `stager meta format`)",
		e.Device, e.Copies[0].Err, e.Copies[1].Err)
}

// Store is a loaded META: the newest valid block and the state of both copies.
type Store struct {
	dev    Device
	name   string
	block  *Block
	copies [2]CopyState
	newest int   // index of the copy Load took
	failed error // a Commit that failed part-way: the store must be loaded again
}

// Load reads both copies from dev and keeps the valid one with the highest
// generation (the first on a tie). name is used in errors. It fails with a
// *CorruptError when neither copy is valid.
func Load(dev Device, name string) (*Store, error) {
	s := &Store{dev: dev, name: name, newest: -1}
	blocks := [2]*Block{}
	// One read for both copies; a copy the same as the first (as both are
	// after a clean commit) is not checked twice: the boot path reads
	// META at every boot.
	buf := make([]byte, 2*BlockSize)
	if n, err := dev.ReadAt(buf, 0); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("reading META copy %d on %s at offset %d: %w", n/BlockSize+1, name, int64(n/BlockSize)*BlockSize, err)
	}
	for i := range s.copies {
		c := &s.copies[i]
		c.Offset = int64(i) * BlockSize
		b := buf[c.Offset : c.Offset+BlockSize]
		switch {
		case i == 1 && bytes.Equal(b, buf[:BlockSize]):
			c.Valid, c.Blank, c.Generation, c.Err = s.copies[0].Valid, s.copies[0].Blank, s.copies[0].Generation, s.copies[0].Err
			blocks[i] = blocks[0]
		case allZero(b):
			c.Valid, c.Blank, blocks[i] = true, true, &Block{}
		default:
			if blocks[i], c.Err = Unmarshal(b); c.Err == nil {
				c.Generation, c.Err = generation(blocks[i])
				c.Valid = c.Err == nil
			}
		}
		if c.Valid && (s.newest < 0 || c.Generation > s.copies[s.newest].Generation) {
			s.newest = i
		}
	}
	if s.newest < 0 {
		return nil, &CorruptError{Device: name, Copies: s.copies}
	}
	s.block = blocks[s.newest]
	return s, nil
}

func generation(b *Block) (uint64, error) {
	v, ok := b.Get(TagGeneration)
	if !ok {
		return 0, nil
	}
	if len(v) != 8 {
		return 0, fmt.Errorf("%w: generation tag 0x%02x holds %d bytes, want 8", ErrMalformed, TagGeneration, len(v))
	}
	return binary.BigEndian.Uint64(v), nil
}

// Name is the device name given to Load.
func (s *Store) Name() string { return s.name }

// Block returns a copy of the newest block, to read or to edit and Commit.
func (s *Store) Block() *Block { return s.block.Clone() }

// Generation is the generation of the newest block.
func (s *Store) Generation() uint64 { return s.copies[s.newest].Generation }

// Copies reports the state of both copies as last loaded or written.
func (s *Store) Copies() [2]CopyState { return s.copies }

// Damaged describes the invalid copies, or returns "" when both are valid.
func (s *Store) Damaged() string {
	var d []string
	for i, c := range s.copies {
		if !c.Valid {
			d = append(d, fmt.Sprintf("copy %d is corrupt (%v)", i+1, c.Err))
		}
	}
	return strings.Join(d, "; ")
}

// Commit writes b with the next generation: first over the copy that does not
// hold the newest block, synced, then over the other, synced. A cut at any
// point leaves one valid copy holding either the old or the new block. A
// corrupt copy is thereby repaired.
func (s *Store) Commit(b *Block) error {
	if s.failed != nil {
		return fmt.Errorf("META on %s: an earlier write failed (%v): load it again", s.name, s.failed)
	}
	next := b.Clone()
	gen := s.Generation() + 1
	var g [8]byte
	binary.BigEndian.PutUint64(g[:], gen)
	if err := next.Set(TagGeneration, g[:]); err != nil {
		return fmt.Errorf("META on %s: %w", s.name, err)
	}
	buf, err := next.Marshal()
	if err != nil {
		return fmt.Errorf("META on %s: %w", s.name, err)
	}
	first := 1 - s.newest
	for _, i := range []int{first, s.newest} {
		off := int64(i) * BlockSize
		if _, err := s.dev.WriteAt(buf, off); err != nil {
			s.failed = fmt.Errorf("writing META copy %d on %s: %w", i+1, s.name, err)
			return s.failed
		}
		if err := s.dev.Sync(); err != nil {
			s.failed = fmt.Errorf("syncing META copy %d on %s: %w", i+1, s.name, err)
			return s.failed
		}
		s.copies[i] = CopyState{Offset: off, Valid: true, Generation: gen}
	}
	s.block, s.newest = next, 0
	return nil
}

// Update applies fn to a copy of the newest block and
// commits the result, unless fn fails.
func (s *Store) Update(fn func(*Block) error) error {
	b := s.Block()
	if err := fn(b); err != nil {
		return err
	}
	return s.Commit(b)
}
