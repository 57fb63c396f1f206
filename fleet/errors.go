package fleet

import (
	"errors"
	"fmt"
	"net"
	"net/url"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
)

// ErrAPI marks a failure to talk to the API server, or a refusal by it.
var ErrAPI = errors.New("kubernetes API")

// apiError says what of the API server's answer about what went wrong,
// and what to do: a missing RBAC rule, an unreachable server.
func apiError(what string, err error) error {
	if err == nil {
		return nil
	}
	var ue *url.Error
	var ne net.Error
	switch {
	case apierrors.IsForbidden(err):
		return fmt.Errorf("%w: %s: forbidden (%v): the agent's account lacks a role; apply contrib/kubernetes/rbac.yaml", ErrAPI, what, err)
	case apierrors.IsUnauthorized(err):
		return fmt.Errorf("%w: %s: unauthorized: check the kubeconfig's credentials (--kubeconfig)", ErrAPI, what)
	case errors.As(err, &ue) || errors.As(err, &ne):
		return fmt.Errorf("%w: %s: the API server cannot be reached (%v): check --kubeconfig and the network", ErrAPI, what, err)
	}
	return fmt.Errorf("%w: %s: %w", ErrAPI, what, err)
}
