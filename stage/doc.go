// Package stage pulls an installer image and stages it: in one streaming
// pass it verifies every blob, keeps only the installer artifacts, writes
// them into the free half of the STAGE partition, and records them in META
// once they are durable.
package stage
