// Package health runs a machine's health checks: the executables of
// greenboot-style required.d and wanted.d directories, each with a timeout.
package health
