package fleet

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"regexp"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
)

// Prefix is the prefix of every label and annotation stagehand writes.
const Prefix = "stagehand.dev/"

// Node labels (short values a selector can use) and annotations.
const (
	LabelVersion = Prefix + "version" // version of the running slot
	LabelSlot    = Prefix + "slot"    // a or b
	LabelPhase   = Prefix + "phase"   // idle, staged, applying, trial, rolled-back

	AnnTarget         = Prefix + "target"           // the image this node upgrades to
	AnnTargetDigest   = Prefix + "target-digest"    // its manifest digest
	AnnBootID         = Prefix + "boot-id"          // the node's boot ID when it rebooted for the upgrade
	AnnCordoned       = Prefix + "cordoned"         // "true" while the node is cordoned by stagehand
	AnnRolledBackFrom = Prefix + "rolled-back-from" // the digest a rollback left
	AnnLastTransition = Prefix + "last-transition"  // META's last transition: time, from → to
	AnnReason         = Prefix + "reason"           // its reason
)

// ControlPlaneLabel marks the nodes whose upgrade is guarded by etcd.
const ControlPlaneLabel = "node-role.kubernetes.io/control-plane"

// patchNode merges labels and annotations (a nil value removes one) into
// the node's metadata.
func patchNode(ctx context.Context, cs kubernetes.Interface, node string, labels, ann map[string]*string) error {
	meta := map[string]any{}
	if len(labels) > 0 {
		meta["labels"] = labels
	}
	if len(ann) > 0 {
		meta["annotations"] = ann
	}
	b, err := json.Marshal(map[string]any{"metadata": meta})
	if err != nil {
		return err
	}
	_, err = cs.CoreV1().Nodes().Patch(ctx, node, types.MergePatchType, b, metav1.PatchOptions{})
	return apiError("node "+node, err)
}

func str(s string) *string { return &s }

var badLabelChars = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

// labelValue fits s into a label value: at most 63 characters of
// [A-Za-z0-9._-], starting and ending with an alphanumeric.
func labelValue(s string) string {
	s = badLabelChars.ReplaceAllString(s, "_")
	if len(s) > 63 {
		s = s[:63]
	}
	return strings.Trim(s, "._-")
}

// ready is the node's Ready condition: true only when the kubelet says so.
func ready(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// event records a Kubernetes Event on the node, as kubectl describe node
// shows it.
func event(ctx context.Context, cs kubernetes.Interface, n *corev1.Node, typ, reason, msg string, now time.Time) error {
	var b [8]byte
	rand.Read(b[:])
	t := metav1.NewTime(now)
	ev := &corev1.Event{
		ObjectMeta:     metav1.ObjectMeta{Name: n.Name + "." + hex.EncodeToString(b[:]), Namespace: metav1.NamespaceDefault},
		InvolvedObject: corev1.ObjectReference{Kind: "Node", Name: n.Name, UID: n.UID, APIVersion: "v1"},
		Reason:         reason, Message: msg, Type: typ,
		Source:         corev1.EventSource{Component: "stagehand", Host: n.Name},
		FirstTimestamp: t, LastTimestamp: t, Count: 1,
		ReportingController: "stagehand.dev/agent", ReportingInstance: n.Name,
	}
	_, err := cs.CoreV1().Events(metav1.NamespaceDefault).Create(ctx, ev, metav1.CreateOptions{})
	return apiError("event on node "+n.Name, err)
}

// IsControlPlane reports whether the node carries ControlPlaneLabel.
func IsControlPlane(ctx context.Context, cs kubernetes.Interface, name string) (bool, error) {
	n, err := cs.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return false, nil // Agent.Run says so
	}
	if err != nil {
		return false, apiError("node "+name, err)
	}
	_, ok := n.Labels[ControlPlaneLabel]
	return ok, nil
}
