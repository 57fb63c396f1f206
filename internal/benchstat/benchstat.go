// Package benchstat summarizes repeated runs of a measurement the way
// `make bench` reports them: the median, with the min and max as the
// spread. The Go benchmarks and the bench's report share it so that a
// median means the same in both.
package benchstat

import (
	"slices"
	"testing"
)

// Median is the middle of xs, the mean of the two middle values for an
// even count, and 0 for none.
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 0 {
		return (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return s[len(s)/2]
}

// Report reports the median of xs as unit, and its min and max as unit-lo
// and unit-hi; nothing for no runs.
func Report(b *testing.B, xs []float64, unit string) {
	if len(xs) == 0 {
		return
	}
	b.ReportMetric(Median(xs), unit)
	b.ReportMetric(slices.Min(xs), unit+"-lo")
	b.ReportMetric(slices.Max(xs), unit+"-hi")
}
