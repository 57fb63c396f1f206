module github.com/stagehand-dev/stagehand

go 1.26.0

require (
	github.com/diskfs/go-diskfs v1.9.4
	github.com/google/go-cmp v0.7.0
	golang.org/x/sys v0.49.0
)

require github.com/google/uuid v1.6.0 // indirect
