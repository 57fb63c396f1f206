// Package bytesize says how many bytes there are the way people read them:
// "48.2 MiB".
package bytesize

import "fmt"

// Format gives n in the largest binary unit it reaches, to a tenth.
func Format(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
