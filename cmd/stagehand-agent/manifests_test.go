package main

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/spf13/cobra"

	"github.com/stagehand-dev/stagehand/apply/applytest"
	"github.com/stagehand-dev/stagehand/disk"
	"github.com/stagehand-dev/stagehand/efivar"
	"github.com/stagehand-dev/stagehand/fleet/kubetest"
)

// sucPlan is system-upgrade-controller's Plan (upgrade.cattle.io/v1), the
// fields its repository defines (pkg/apis/upgrade.cattle.io/v1/types.go):
// decoded strictly, a field SUC does not know fails the test. Its CRD
// cannot be installed here, so the Plan's containers are checked as the
// pod of SUC's Job instead.
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
	Image           string                  `json:"image"`
	SecurityContext *corev1.SecurityContext `json:"securityContext"`
	Command         []string                `json:"command"`
	Args            []string                `json:"args"`
	Envs            []corev1.EnvVar         `json:"envs"`
	Volumes         []struct {
		Name        string `json:"name"`
		Source      string `json:"source"`
		Destination string `json:"destination"`
	} `json:"volumes"`
}

func manifests() string { return filepath.Join(kubetest.Root(), "contrib", "kubernetes") }

func plans(t *testing.T) []sucPlan {
	t.Helper()
	var ps []sucPlan
	for _, doc := range kubetest.Docs(t, filepath.Join(manifests(), "plans.yaml")) {
		var p sucPlan
		if err := yaml.UnmarshalStrict(doc, &p); err != nil {
			t.Fatalf("plans.yaml: %v", err)
		}
		ps = append(ps, p)
	}
	return ps
}

// jobPod is the pod SUC's Job runs for container c of plan p: privileged
// with CAP_SYS_BOOT unless the container sets its own securityContext, host PID, IPC and network, the host's / at /host, and
// the Plan's own host volumes.
func jobPod(p sucPlan, c *sucContainer) *corev1.Pod {
	priv, dir := true, corev1.HostPathDirectory
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
			Volumes: []corev1.Volume{{Name: "host-root", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/", Type: &dir}}}},
		},
	}
	if c.SecurityContext != nil { // the Plan's replaces SUC's default
		pod.Spec.Containers[0].SecurityContext = c.SecurityContext
	}
	for _, v := range c.Volumes {
		pod.Spec.Containers[0].VolumeMounts = append(pod.Spec.Containers[0].VolumeMounts, corev1.VolumeMount{Name: v.Name, MountPath: v.Destination})
		pod.Spec.Volumes = append(pod.Spec.Volumes, corev1.Volume{Name: v.Name, VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: v.Source}}})
	}
	return pod
}

// TestManifests: every image in contrib/kubernetes is the agent's image
// at the version of the file VERSION (what make image builds), and every
// pod that runs node upgrade has what it needs: privileged, the host's
// /dev and efivarfs at their usual places (to find the boot disk), and the
// host's root where --host-root says (to reboot through its init).
func TestManifests(t *testing.T) {
	v, err := os.ReadFile(filepath.Join(kubetest.Root(), "VERSION"))
	if err != nil {
		t.Fatal(err)
	}
	want := "ghcr.io/stagehand-dev/stagehand-agent:" + strings.TrimSpace(string(v))
	files, _ := filepath.Glob(filepath.Join(manifests(), "*.yaml"))
	images := 0
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range regexp.MustCompile(`(?m)^\s*-?\s*image:\s*(\S+)`).FindAllStringSubmatch(string(b), -1) {
			images++
			if m[1] != want {
				t.Errorf("%s: image %s, want %s", filepath.Base(f), m[1], want)
			}
		}
	}
	if images < 4 {
		t.Errorf("%d images in %s, want the Plans' 3 and the DaemonSet's", images, manifests())
	}

	type mounts map[string]string // destination: host path
	check := func(name string, command, args []string, sc *corev1.SecurityContext, m mounts) {
		t.Helper()
		if len(command) < 3 || command[0] != "/usr/bin/stagehand-agent" || command[1] != "node" || command[2] != "upgrade" {
			return
		}
		if sc == nil || sc.Privileged == nil || !*sc.Privileged {
			t.Errorf("%s: not privileged: the agent writes the node's disk and reboots it", name)
		}
		// make image's user is the non-root 65532 (agentimage): without
		// runAsUser 0 the upgrade could not open the disk.
		if sc == nil || sc.RunAsUser == nil || *sc.RunAsUser != 0 {
			t.Errorf("%s: securityContext %+v: want runAsUser 0, the image's own user is not root", name, sc)
		}
		if m["/dev"] != "/dev" || m[disk.EFIVarsDir] != disk.EFIVarsDir {
			t.Errorf("%s: mounts %v: want the host's /dev and %s at the same paths", name, m, disk.EFIVarsDir)
		}
		root := ""
		for _, a := range args {
			if r, ok := strings.CutPrefix(a, "--host-root="); ok {
				root = r
			}
		}
		if root == "" || m[root] != "/" {
			t.Errorf("%s: --host-root %q, mounts %v: want the host's / there", name, root, m)
		}
	}
	for _, p := range plans(t) {
		for _, c := range []*sucContainer{p.Spec.Prepare, p.Spec.Upgrade} {
			if c == nil {
				continue
			}
			m := mounts{"/host": "/"} // SUC's, and it runs the Job privileged
			for _, v := range c.Volumes {
				m[v.Destination] = v.Source
			}
			check(p.Metadata.Name, c.Command, c.Args, c.SecurityContext, m)
		}
	}
	var ds appsv1.DaemonSet
	if err := yaml.UnmarshalStrict(kubetest.Docs(t, filepath.Join(manifests(), "kured.yaml"))[0], &ds); err != nil {
		t.Fatal(err)
	}
	vols := map[string]string{}
	for _, v := range ds.Spec.Template.Spec.Volumes {
		if v.HostPath != nil {
			vols[v.Name] = v.HostPath.Path
		}
	}
	for _, c := range ds.Spec.Template.Spec.Containers {
		m := mounts{}
		for _, vm := range c.VolumeMounts {
			m[vm.MountPath] = vols[vm.Name]
		}
		check("kured.yaml "+c.Name, c.Command, c.Args, c.SecurityContext, m)
		if !slices.Contains(c.Args, "--host-root=/host") {
			t.Errorf("kured.yaml: %v", c.Args)
		}
	}
}

// TestKubernetesManifests: the RBAC is created on a real API server, the
// kured DaemonSet passes its server-side dry run, and each Plan parses
// strictly, its containers' flags parse with the agent's own commands, and
// the pod SUC's Job would run for it passes the server-side dry run.
func TestKubernetesManifests(t *testing.T) {
	s := kubetest.StartAPIServer(t)
	cs := s.Client(kubetest.AdminToken)
	if other := kubetest.Apply(t, cs, filepath.Join(manifests(), "rbac.yaml"), false); len(other) != 0 {
		t.Fatalf("rbac.yaml: %d unknown documents", len(other))
	}
	if other := kubetest.Apply(t, cs, filepath.Join(manifests(), "kured.yaml"), true); len(other) != 0 {
		t.Fatalf("kured.yaml: %d unknown documents", len(other))
	}
	ps := plans(t)
	if len(ps) != 2 {
		t.Fatalf("plans.yaml: %d Plans, want 2", len(ps))
	}
	ctx := context.Background()
	for _, p := range ps {
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
			if len(c.Command) < 3 || c.Command[0] != "/usr/bin/stagehand-agent" || c.Command[1] != "node" {
				t.Fatalf("%s: command %v", p.Metadata.Name, c.Command)
			}
			cmd := map[string]func() *cobra.Command{"upgrade": newNodeUpgradeCmd, "wait": newNodeWaitCmd}[c.Command[2]]
			if cmd == nil {
				t.Fatalf("%s: stagehand-agent node %s is no command", p.Metadata.Name, c.Command[2])
			}
			if err := cmd().ParseFlags(c.Args); err != nil {
				t.Errorf("%s: stagehand-agent node %s %v: %v", p.Metadata.Name, c.Command[2], c.Args, err)
			}
			pod := jobPod(p, c)
			if _, err := cs.CoreV1().Pods(pod.Namespace).Create(ctx, pod, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}, FieldValidation: "Strict"}); err != nil {
				t.Errorf("%s: the Job's pod: %v", p.Metadata.Name, err)
			}
		}
	}
}

// TestPlanPod runs the workers' Plan's upgrade container as SUC's Job
// would: its command and arguments from plans.yaml, the environment SUC
// sets, --host-root and the Plan's volumes at their paths under a
// temporary directory standing for the pod's file system, the disk found
// through the efivars and /dev mounted there, against a real API server.
// Only the registry (a local one, plain HTTP) and the API server's address
// are the test's.
func TestPlanPod(t *testing.T) {
	var p sucPlan
	for _, q := range plans(t) {
		if q.Metadata.Name == "stagehand-workers" {
			p = q
		}
	}
	c := p.Spec.Upgrade
	s := kubetest.StartAPIServer(t)
	cs := s.Client(kubetest.AdminToken)
	kubetest.Apply(t, cs, filepath.Join(manifests(), "rbac.yaml"), false)
	kubetest.AddNode(t, cs, "w-0", nil)
	m := applytest.NewDisk(t, "v1")
	reg := applytest.Registry(t)
	m.Push(reg, p.Spec.Version)

	// The pod's file system: the Plan's volumes and SUC's /host.
	pod := t.TempDir()
	for _, v := range c.Volumes {
		if err := os.MkdirAll(filepath.Join(pod, v.Destination), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	host, rebooted := fakeHost(t, true)
	if err := os.Symlink(host, filepath.Join(pod, "host")); err != nil {
		t.Fatal(err)
	}
	// The host's disk, as /dev shows it and the pod's sysfs lists it, and
	// the variable systemd-boot set.
	if err := os.Symlink(m.Img, filepath.Join(pod, "dev", "vda")); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(pod, "sys", "block", "vda"), 0o755); err != nil {
		t.Fatal(err)
	}
	setBootPart(t, filepath.Join(pod, disk.EFIVarsDir), m.Img)
	savedRoot, savedVars := podRoot, efiVars
	t.Cleanup(func() { podRoot, efiVars = savedRoot, savedVars })
	podRoot, efiVars = pod, func(dir string) (efivar.Store, error) { return efivar.Dir(dir), nil }

	t.Setenv("SYSTEM_UPGRADE_NODE_NAME", "w-0")
	t.Setenv("SYSTEM_UPGRADE_PLAN_LATEST_VERSION", p.Spec.Version)
	args := slices.Clone(c.Command[1:])
	for _, a := range c.Args {
		a = strings.Replace(a, "--image=registry.example/", "--image="+reg+"/", 1)
		if r, ok := strings.CutPrefix(a, "--host-root="); ok {
			a = "--host-root=" + filepath.Join(pod, r)
		}
		args = append(args, a)
	}
	args = append(args, "--insecure", "--kubeconfig", s.Kubeconfig(kubetest.AgentToken))
	agent(t, 0, "rebooting: node w-0, "+reg+"/stagehand/os:"+p.Spec.Version, args...)
	if st := m.Status(); st.Staged == nil || st.Staged.Target != "b" {
		t.Fatalf("staged %+v", st.Staged)
	}
	if want := "chroot " + filepath.Join(pod, "host") + " /usr/bin/systemctl reboot"; len(*rebooted) != 1 || (*rebooted)[0] != want {
		t.Fatalf("reboots %q, want %q", *rebooted, want)
	}
}

// setBootPart writes LoaderDevicePartUUID into dir (efivarfs format), naming
// the first partition of img.
func setBootPart(t *testing.T, dir, img string) {
	t.Helper()
	d, err := disk.Open(img, false)
	if err != nil {
		t.Fatal(err)
	}
	guid := d.Partitions()[0].GUID
	d.Close()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := efivar.SetString(efivar.Dir(dir), "LoaderDevicePartUUID", efivar.LoaderVendor, 0x7, strings.ToUpper(guid)); err != nil {
		t.Fatal(err)
	}
}
