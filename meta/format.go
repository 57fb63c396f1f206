package meta

// Format writes an empty block with generation 1 over both copies, whatever
// they held, in the same order as Commit. It is the way out of a
// *CorruptError when the contents are given up.
func Format(dev Device, name string) (*Store, error) {
	s := &Store{dev: dev, name: name, block: &Block{}, newest: 0}
	s.copies[0] = CopyState{Valid: true, Blank: true}
	s.copies[1] = CopyState{Offset: BlockSize, Valid: true, Blank: true}
	if err := s.Commit(&Block{}); err != nil {
		return nil, err
	}
	return s, nil
}
