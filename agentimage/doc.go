// Package agentimage builds the fleet agent's container image, an OCI index
// of static binaries, CA certificates and a non-root user, reproducibly and
// without a Docker daemon, and writes it to an OCI layout or a registry.
package agentimage
