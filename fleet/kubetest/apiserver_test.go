package kubetest_test

import (
	"context"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/stagehand-dev/stagehand/fleet/kubetest"
)

func TestAPIServer(t *testing.T) {
	s := kubetest.StartAPIServer(t, kubetest.User{Name: "nobody", Groups: []string{"test"}})
	ctx := context.Background()
	v, err := s.Client(kubetest.AdminToken).Discovery().ServerVersion()
	if err != nil || v.GitVersion != "v1.37.2" {
		t.Fatalf("version %+v, %v", v, err)
	}
	if _, err := s.Client(kubetest.AdminToken).CoreV1().Namespaces().Get(ctx, "kube-system", metav1.GetOptions{}); err != nil {
		t.Fatal(err)
	}
	// RBAC is on: a user with no binding is refused.
	if _, err := s.Client("nobody").CoreV1().Nodes().List(ctx, metav1.ListOptions{}); err == nil {
		t.Fatal("a user with no role listed nodes")
	}
}
