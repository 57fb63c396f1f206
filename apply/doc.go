// Package apply runs stagehand's boot flow (DESIGN.md, "Boot flow"): at
// early boot it applies a staged payload to the inactive slot, arms a trial
// and says where to boot next, and it rolls back a trial that never
// confirmed; from user space it confirms the running slot or rolls back to
// the other. META is the source of truth, and every transition is committed
// (and synced) before the action it announces, so that a cut at any point
// leads on the next boot to the old version or the new, never to none.
package apply
