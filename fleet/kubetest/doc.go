// Package kubetest runs a real etcd cluster and a real kube-apiserver on
// 127.0.0.1 for tests, from the binaries tools/build.sh builds.
package kubetest
