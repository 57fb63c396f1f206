// Package cli is what stager and stagehand-agent share on their command
// lines: running a command tree with one-line errors and exit codes, usage
// errors, and the flags both take (--disk, --verify-key, --policy).
package cli
