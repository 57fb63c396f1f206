package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/spf13/cobra"

	"github.com/stagehand-dev/stagehand/apply/applytest"
	"github.com/stagehand-dev/stagehand/fleet"
	"github.com/stagehand-dev/stagehand/fleet/kubetest"
	"github.com/stagehand-dev/stagehand/meta"
)

// sucPlan is system-upgrade-controller's Plan (upgrade.cattle.io/v1), the
// fields its repository defines (NOTES.md): decoded strictly, a field SUC
// does not know fails the test. Its CRD cannot be installed here, so the
// Plan's containers are checked as the pod of SUC's Job instead.
type sucPlan struct {
	APIVersion string            `json:"apiVersion"`
	Kind       string            `json:"kind"`
	Metadata   metav1.ObjectMeta `json:"metadata"`
	Spec       struct {
		Concurrency           int                   `json:"concurrency"`
		NodeSelector          *metav1.LabelSelector `json:"nodeSelector"`
		ServiceAccountName    string                `json:"serviceAccountName"`
		Version               string                `json:"version"`
		Channel               string                `json:"channel"`
		Cordon                bool                  `json:"cordon"`
		Drain                 *struct{}             `json:"drain"`
		Prepare               *sucContainer         `json:"prepare"`
		Upgrade               *sucContainer         `json:"upgrade"`
		Tolerations           []corev1.Toleration   `json:"tolerations"`
		Exclusive             bool                  `json:"exclusive"`
		JobActiveDeadlineSecs int64                 `json:"jobActiveDeadlineSecs"`
	} `json:"spec"`
}

type sucContainer struct {
	Image   string          `json:"image"`
	Command []string        `json:"command"`
	Args    []string        `json:"args"`
	Envs    []corev1.EnvVar `json:"envs"`
}

// TestKubernetesManifests: the RBAC is created on a real API server, the
// kured DaemonSet passes its server-side dry run, and each Plan parses
// strictly, its containers' flags parse with stager's own commands, and
// the pod SUC's Job would run for it passes the server-side dry run.
func TestKubernetesManifests(t *testing.T) {
	s := kubetest.StartAPIServer(t)
	cs := s.Client(kubetest.AdminToken)
	dir := filepath.Join(kubetest.Root(), "contrib", "kubernetes")
	if other := kubetest.Apply(t, cs, filepath.Join(dir, "rbac.yaml"), false); len(other) != 0 {
		t.Fatalf("rbac.yaml: %d unknown documents", len(other))
	}
	if other := kubetest.Apply(t, cs, filepath.Join(dir, "kured.yaml"), true); len(other) != 0 {
		t.Fatalf("kured.yaml: %d unknown documents", len(other))
	}
	plans := kubetest.Apply(t, cs, filepath.Join(dir, "plans.yaml"), true)
	if len(plans) != 2 {
		t.Fatalf("plans.yaml: %d Plans, want 2", len(plans))
	}
	ctx := context.Background()
	for _, doc := range plans {
		var p sucPlan
		if err := yaml.UnmarshalStrict(doc, &p); err != nil {
			t.Fatalf("plans.yaml: %v", err)
		}
		if p.APIVersion != "upgrade.cattle.io/v1" || p.Kind != "Plan" || p.Spec.Version == "" || p.Spec.Cordon || p.Spec.Drain != nil {
			t.Errorf("%s: %+v", p.Metadata.Name, p)
		}
		if _, err := cs.CoreV1().ServiceAccounts(p.Metadata.Namespace).Get(ctx, p.Spec.ServiceAccountName, metav1.GetOptions{}); err != nil {
			t.Errorf("%s: service account: %v", p.Metadata.Name, err)
		}
		for _, c := range []*sucContainer{p.Spec.Prepare, p.Spec.Upgrade} {
			if c == nil {
				continue
			}
			if len(c.Command) < 3 || filepath.Base(c.Command[0]) != "stager" || c.Command[1] != "node" {
				t.Fatalf("%s: command %v", p.Metadata.Name, c.Command)
			}
			cmd := map[string]func() *cobra.Command{"upgrade": newNodeUpgradeCmd, "wait": newNodeWaitCmd}[c.Command[2]]
			if cmd == nil {
				t.Fatalf("%s: stager node %s is no command", p.Metadata.Name, c.Command[2])
			}
			if err := cmd().ParseFlags(c.Args); err != nil {
				t.Errorf("%s: stager node %s %v: %v", p.Metadata.Name, c.Command[2], c.Args, err)
			}
			// The pod of SUC's Job: privileged, host PID, the host at /host.
			priv, hostPath := true, corev1.HostPathDirectory
			pod := &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{GenerateName: "apply-" + p.Metadata.Name + "-", Namespace: p.Metadata.Namespace},
				Spec: corev1.PodSpec{
					ServiceAccountName: p.Spec.ServiceAccountName, HostPID: true, HostIPC: true, HostNetwork: true,
					Tolerations: p.Spec.Tolerations, RestartPolicy: corev1.RestartPolicyNever,
					Containers: []corev1.Container{{
						Name: "upgrade", Image: c.Image, Command: c.Command, Args: c.Args,
						Env:             append([]corev1.EnvVar{{Name: "SYSTEM_UPGRADE_NODE_NAME", Value: "cp-0"}, {Name: "SYSTEM_UPGRADE_PLAN_LATEST_VERSION", Value: p.Spec.Version}}, c.Envs...),
						SecurityContext: &corev1.SecurityContext{Privileged: &priv, Capabilities: &corev1.Capabilities{Add: []corev1.Capability{"CAP_SYS_BOOT"}}},
						VolumeMounts:    []corev1.VolumeMount{{Name: "host-root", MountPath: "/host"}},
					}},
					Volumes: []corev1.Volume{{Name: "host-root", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/", Type: &hostPath}}}},
				},
			}
			if _, err := cs.CoreV1().Pods(pod.Namespace).Create(ctx, pod, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}, FieldValidation: "Strict"}); err != nil {
				t.Errorf("%s: the Job's pod: %v", p.Metadata.Name, err)
			}
		}
	}
}

// TestNodeUpgrade runs stager node upgrade on a disk image against a real
// API server through each of its exits: bad input (2), refusals (1, one
// line), a lock held by another node (4), rebooting and upgraded (0), a
// rollback (3), then stager node resume.
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

	// The reboot goes through the host's systemd, chrooted: recorded here.
	host := t.TempDir()
	if err := os.MkdirAll(filepath.Join(host, "run/systemd/system"), 0o755); err != nil {
		t.Fatal(err)
	}
	var rebooted []string
	saved := hostRebooter
	t.Cleanup(func() { hostRebooter = saved })
	hostRebooter = rebooter{
		run: func(_ context.Context, name string, args ...string) ([]byte, error) {
			rebooted = append(rebooted, name+" "+strings.Join(args, " "))
			return nil, nil
		},
		syscall: func() error { t.Fatal("reboot(2) called"); return nil },
	}
	stager := func(t *testing.T, code int, want string, args ...string) {
		t.Helper()
		var stdout, stderr bytes.Buffer
		args = append([]string{"node", "upgrade", "--kubeconfig", kc, "--disk", m.Img, "--insecure", "--host-root", host, "--ready-timeout", "2s"}, args...)
		got := run(context.Background(), args, &stdout, &stderr)
		if got != code {
			t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", got, code, &stdout, &stderr)
		}
		out := stdout.String()
		if code != 0 {
			lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
			out = lines[len(lines)-1]
			if !strings.HasPrefix(out, "stager: ") {
				t.Errorf("last line of stderr %q", out)
			}
		}
		if !strings.Contains(out, want) {
			t.Fatalf("%q does not say %q\nstderr: %s", out, want, &stderr)
		}
	}
	untouched := func(t *testing.T) {
		t.Helper()
		if st := m.Status(); st.Staged != nil || len(rebooted) != 0 {
			t.Fatalf("staged %+v, reboots %v", st.Staged, rebooted)
		}
		if n, _ := cs.CoreV1().Nodes().Get(context.Background(), "w-0", metav1.GetOptions{}); n.Spec.Unschedulable {
			t.Fatal("w-0 left cordoned")
		}
	}
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
	} {
		t.Run(tc.name, func(t *testing.T) {
			stager(t, tc.code, tc.want, tc.args...)
			untouched(t)
		})
	}
	t.Run("lock held", func(t *testing.T) {
		other := &fleet.Lock{Client: cs, Holder: "w-1"}
		if _, err := other.Acquire(context.Background()); err != nil {
			t.Fatal(err)
		}
		stager(t, exitWait, "held by node w-1", "--node", "w-0", "--image", v2)
		untouched(t)
		if err := other.Release(context.Background()); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("upgrade", func(t *testing.T) {
		stager(t, 0, "rebooting: node w-0", "--node", "w-0", "--image", v2)
		if len(rebooted) != 1 || rebooted[0] != "chroot "+host+" systemctl reboot" {
			t.Fatalf("reboots %v", rebooted)
		}
		kubetest.SetReady(t, cs, "w-0", false, "")
		if slot := m.Settle(true); slot != meta.SlotB {
			t.Fatalf("settled on %s", slot)
		}
		kubetest.SetReady(t, cs, "w-0", true, "boot-1")
		stager(t, 0, "upgraded: node w-0, v2", "--node", "w-0", "--image", v2)
		// What node-exporter's textfile collector reads.
		prom := filepath.Join(t.TempDir(), "stagehand.prom")
		var stdout, stderr bytes.Buffer
		if code := run(context.Background(), []string{"status", "--disk", m.Img, "--prometheus", prom}, &stdout, &stderr); code != 0 {
			t.Fatalf("status --prometheus: %d %s", code, &stderr)
		}
		b, err := os.ReadFile(prom)
		if err != nil || !strings.Contains(string(b), `stagehand_info{slot="b",version="v2",`) || !strings.Contains(string(b), `stagehand_phase{phase="idle"} 1`) {
			t.Fatalf("%s: %v\n%s", prom, err, b)
		}
	})
	t.Run("rolled back", func(t *testing.T) {
		stager(t, 0, "rebooting", "--node", "w-0", "--image", v3)
		if slot := m.Settle(false); slot != meta.SlotB {
			t.Fatalf("settled on %s", slot)
		}
		kubetest.SetReady(t, cs, "w-0", true, "boot-2")
		stager(t, exitRolledBack, "w-0 rolled back from v3", "--node", "w-0", "--image", v3)
		w1 := applytest.NewDisk(t, "v1")
		stager(t, exitWait, "rollout stopped", "--node", "w-1", "--image", v3, "--disk", w1.Img)
		if w1.Staged() != nil {
			t.Fatal("w-1 staged while the rollout is stopped")
		}
		var stdout, stderr bytes.Buffer
		if code := run(context.Background(), []string{"node", "resume", "--kubeconfig", kc}, &stdout, &stderr); code != 0 || !strings.Contains(stdout.String(), "resumed the rollout stopped") || !strings.Contains(stdout.String(), "by node w-0") {
			t.Fatalf("resume: %d %s %s", code, &stdout, &stderr)
		}
	})
}

func writeKubeconfig(t *testing.T, server string) string {
	p := filepath.Join(t.TempDir(), "kubeconfig")
	cfg := "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: \"" + server + "\", insecure-skip-tls-verify: true}\nusers:\n- name: u\n  user: {token: x}\ncontexts:\n- name: c\n  context: {cluster: c, user: u}\ncurrent-context: c\n"
	if err := os.WriteFile(p, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
