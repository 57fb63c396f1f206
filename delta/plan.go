package delta

// Range is a byte range of the blob to fetch: [Off, Off+Len).
type Range struct {
	Off, Len int64
}

// Plan says where each chunk of a blob comes from.
type Plan struct {
	Index *Index
	Seeds *Seeds
	// From holds, for each chunk, where it lies in a seed, or Seed -1
	// when it is fetched.
	From []Loc
	// Fetch are the ranges of the blob to read from its source: the
	// chunks no seed holds, neighbours merged into one range.
	Fetch []Range
	// Reused is how many bytes each seed gives (by its index in Seeds),
	// Fetched how many are read from the source.
	Reused  []int64
	Fetched int64
}

// NewPlan plans the blob of x from s.
func NewPlan(x *Index, s *Seeds) *Plan {
	p := &Plan{Index: x, Seeds: s, From: make([]Loc, len(x.Chunks)), Reused: make([]int64, len(s.list))}
	for i, c := range x.Chunks {
		l, ok := s.Find(c)
		if !ok {
			p.From[i] = Loc{Seed: -1}
			p.Fetched += int64(c.Len)
			if n := len(p.Fetch); n > 0 && p.Fetch[n-1].Off+p.Fetch[n-1].Len == c.Off {
				p.Fetch[n-1].Len += int64(c.Len)
			} else {
				p.Fetch = append(p.Fetch, Range{c.Off, int64(c.Len)})
			}
			continue
		}
		p.From[i] = l
		p.Reused[l.Seed] += int64(c.Len)
	}
	return p
}

// SeedName is the name of seed i.
func (p *Plan) SeedName(i int) string { return p.Seeds.list[i].Name }
