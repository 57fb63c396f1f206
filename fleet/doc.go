// Package fleet upgrades the nodes of a Kubernetes cluster one at a time
// with stagehand: an idempotent per-node step (Agent.Run) that a
// system-upgrade-controller Job, a DaemonSet or a person runs, a fleet lock
// of coordination.k8s.io Leases held across the reboot, drains that honour
// PodDisruptionBudgets, and a rollout that stops when a node rolls back.
package fleet
