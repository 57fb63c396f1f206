package realos

import (
	"os"
	"path/filepath"
	"testing"
)

// TestKey: the cache key follows the base script (the package list is in
// it) and nothing else of the repository.
func TestKey(t *testing.T) {
	root := t.TempDir()
	script := filepath.Join(root, BaseScript)
	if err := os.MkdirAll(filepath.Dir(script), 0o755); err != nil {
		t.Fatal(err)
	}
	keyOf := func(content string) string {
		t.Helper()
		if err := os.WriteFile(script, []byte(content), 0o755); err != nil {
			t.Fatal(err)
		}
		k, err := Key(root)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	base := keyOf("packages=systemd,udev\n")
	for _, tt := range []struct {
		name, script string
		same         bool
	}{
		{"same script", "packages=systemd,udev\n", true},
		{"another package list", "packages=systemd,udev,kmod\n", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := keyOf(tt.script); (got == base) != tt.same {
				t.Errorf("key %s against %s: same=%v, want %v", got, base, got == base, tt.same)
			}
		})
	}
	if err := os.WriteFile(filepath.Join(root, "README.md"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := keyOf("packages=systemd,udev\n"); got != base {
		t.Errorf("a file outside the image's inputs changed the key: %s, want %s", got, base)
	}
	os.Remove(script)
	if _, err := Key(root); err == nil {
		t.Error("Key without the base script: no error")
	}
}
