package main

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/stagehand-dev/stagehand/apply/applytest"
	"github.com/stagehand-dev/stagehand/fleet"
	"github.com/stagehand-dev/stagehand/fleet/kubetest"
	"github.com/stagehand-dev/stagehand/meta"
)

// TestNodeUpgrade runs stagehand-agent node upgrade on a disk image against
// a real API server through each of its exits: bad input (2), refusals (1,
// one line; a host with no init system to reboot through among them), a
// lock held by another node (4), rebooting and upgraded (0), a rollback
// (3), the rollout stopped (5); then rollout status while it is stopped
// and another node holds a Lease, and node resume.
func TestNodeUpgrade(t *testing.T) {
	s := kubetest.StartAPIServer(t)
	cs := s.Client(kubetest.AdminToken)
	kubetest.Apply(t, cs, filepath.Join(kubetest.Root(), "contrib", "kubernetes", "rbac.yaml"), false)
	kubetest.AddNode(t, cs, "w-0", nil)
	kubetest.AddNode(t, cs, "w-1", nil)
	m := applytest.NewDisk(t, "v1")
	reg := applytest.Registry(t)
	v2, v3 := m.Push(reg, "v2"), m.Push(reg, "v3")
	kc := s.Kubeconfig(kubetest.AgentToken)
	ctx := context.Background()

	// The reboot goes through the host's systemd, chrooted: recorded here.
	host, rebooted := fakeHost(t, true)
	upgrade := func(t *testing.T, code int, want string, args ...string) string {
		t.Helper()
		args = append([]string{"node", "upgrade", "--kubeconfig", kc, "--disk", m.Img, "--insecure", "--host-root", host, "--ready-timeout", "2s"}, args...)
		out, _ := agent(t, code, want, args...)
		return out
	}
	untouched := func(t *testing.T) {
		t.Helper()
		if st := m.Status(); st.Staged != nil || len(*rebooted) != 0 {
			t.Fatalf("staged %+v, reboots %v", st.Staged, *rebooted)
		}
		if n, _ := cs.CoreV1().Nodes().Get(ctx, "w-0", metav1.GetOptions{}); n.Spec.Unschedulable {
			t.Fatal("w-0 left cordoned")
		}
		if held, err := (&fleet.Lock{Client: cs, Holder: "w-0"}).Held(ctx); err != nil || held {
			t.Fatalf("w-0 holds the lock (%v)", err)
		}
	}
	noInit := t.TempDir() // a host root with neither systemd nor a reboot command
	for _, tc := range []struct {
		name string
		code int
		want string
		args []string
	}{
		{"no image", 2, "--image is required", []string{"--node", "w-0"}},
		{"bad reference", 2, "malformed image reference", []string{"--node", "w-0", "--image", "Not:A Ref"}},
		{"no such node", 1, `node "w-9" does not exist`, []string{"--node", "w-9", "--image", v2}},
		{"no such image", 1, "v9", []string{"--node", "w-0", "--image", reg + "/stagehand/os:v9"}},
		{"unreachable", 1, "cannot be reached", []string{"--node", "w-0", "--image", v2, "--kubeconfig", writeKubeconfig(t, "https://127.0.0.1:1")}},
		{"host without init", 1, "no way to reboot the host through its init system: neither systemd", []string{"--node", "w-0", "--image", v2, "--host-root", noInit}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			upgrade(t, tc.code, tc.want, tc.args...)
			untouched(t)
		})
	}
	t.Run("lock held", func(t *testing.T) {
		other := &fleet.Lock{Client: cs, Holder: "w-1"}
		if _, err := other.Acquire(ctx); err != nil {
			t.Fatal(err)
		}
		upgrade(t, exitHeld, "held by node w-1", "--node", "w-0", "--image", v2)
		untouched(t)
		if err := other.Release(ctx); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("upgrade", func(t *testing.T) {
		// The summary names the slot v2 goes to (b), not the one that runs.
		// Then again, as a Job the reboot did not kill: staged, not rebooted.
		for range 2 {
			if out := upgrade(t, 0, "rebooting: node w-0, "+v2+" (sha256:", "--node", "w-0", "--image", v2); !strings.HasSuffix(out, ") for slot b\n") {
				t.Fatalf("summary %q does not name slot b", out)
			}
		}
		want := []string{"chroot " + host + " /usr/bin/systemctl reboot", "chroot " + host + " /usr/bin/systemctl reboot"}
		if strings.Join(*rebooted, "|") != strings.Join(want, "|") {
			t.Fatalf("reboots %v", *rebooted)
		}
		kubetest.SetReady(t, cs, "w-0", false, "")
		if slot := m.Settle(true); slot != meta.SlotB {
			t.Fatalf("settled on %s", slot)
		}
		kubetest.SetReady(t, cs, "w-0", true, "boot-1")
		upgrade(t, 0, "upgraded: node w-0, v2 (sha256:", "--node", "w-0", "--image", v2)
	})
	t.Run("rolled back", func(t *testing.T) {
		upgrade(t, 0, "rebooting", "--node", "w-0", "--image", v3)
		if slot := m.Settle(false); slot != meta.SlotB {
			t.Fatalf("settled on %s", slot)
		}
		// Another node holds the lock's second Lease meanwhile.
		w1 := &fleet.Lock{Client: cs, Holder: "w-1", Slots: 2}
		if _, err := w1.Acquire(ctx); err != nil {
			t.Fatal(err)
		}
		kubetest.SetReady(t, cs, "w-0", true, "boot-2")
		upgrade(t, exitRolledBack, "w-0 rolled back from v3", "--node", "w-0", "--image", v3)
		w1disk := applytest.NewDisk(t, "v1")
		upgrade(t, exitStopped, "rollout stopped", "--node", "w-1", "--image", v3, "--disk", w1disk.Img)
		if w1disk.Staged() != nil {
			t.Fatal("w-1 staged while the rollout is stopped")
		}

		table, _ := agent(t, 0, "rollout: STOPPED since", "rollout", "status", "--kubeconfig", kc)
		if !strings.Contains(table, "by node w-0: node w-0 rolled back from v3") {
			t.Errorf("rollout status does not say why:\n%s", table)
		}
		for _, want := range [][]string{{"stagehand-upgrade-0", "-", "-"}, {"stagehand-upgrade-1", "w-1", "20"}, {"w-0", "v2", "b", "rolled-back"}, {"w-1", "v1", "a", "idle"}} {
			if !hasRow(table, want) {
				t.Errorf("rollout status has no row %q:\n%s", want, table)
			}
		}
		out, _ := agent(t, 0, "", "rollout", "status", "--kubeconfig", kc, "--json")
		var r fleet.Rollout
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		if r.Stopped == nil || r.Stopped.Node != "w-0" || !strings.Contains(r.Stopped.Reason, "rolled back from v3") ||
			len(r.Leases) != 2 || r.Leases[0].Holder != "" || r.Leases[1].Holder != "w-1" || r.Leases[1].Acquired == nil ||
			len(r.Nodes) != 2 || r.Nodes[0].Phase != "rolled-back" || r.Nodes[0].Version != "v2" || r.Nodes[0].Slot != "b" || r.Nodes[0].LastTransition == "" {
			t.Errorf("rollout status --json:\n%s", out)
		}

		agent(t, 0, "resumed the rollout stopped", "node", "resume", "--kubeconfig", kc)
		agent(t, 0, "rollout: running", "rollout", "status", "--kubeconfig", kc)
		if err := w1.Release(ctx); err != nil {
			t.Fatal(err)
		}
	})
}

// hasRow reports whether a line of table starts with the fields want (the
// last one a prefix).
func hasRow(table string, want []string) bool {
	for _, line := range strings.Split(table, "\n") {
		f := strings.Fields(line)
		if len(f) < len(want) {
			continue
		}
		n := len(want) - 1
		if strings.Join(f[:n], " ") == strings.Join(want[:n], " ") && strings.HasPrefix(f[n], want[n]) {
			return true
		}
	}
	return false
}
