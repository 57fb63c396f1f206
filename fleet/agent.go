package fleet

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/stagehand-dev/stagehand/fleet/etcdguard"
	"github.com/stagehand-dev/stagehand/meta"
	"github.com/stagehand-dev/stagehand/stage"
)

// Defaults for Agent.
const (
	DefaultConfirmTimeout = 10 * time.Minute
	DefaultReadyTimeout   = 5 * time.Minute
)

// ErrRolledBack marks a node that tried the target and went back to its
// old slot: the rollout stops there.
var ErrRolledBack = errors.New("rolled back")

// ErrNotDone marks a step that did not finish in time (a trial not
// confirmed, a node not Ready again); the next run goes on from there.
var ErrNotDone = errors.New("upgrade not finished")

// Agent is the upgrade step of one node: each Run reads META and the Node
// and does the next step only, so a Job that the reboot kills and runs
// again, or a person, can call it any number of times.
type Agent struct {
	Client kubernetes.Interface
	Node   string        // this node's name
	Stage  stage.Options // the target image (Image, Disk, verification)
	Lock   Lock          // the fleet lock; its Holder is set to Node
	Drain  Drainer
	// Etcd, when set, guards a control-plane node's upgrade: it is checked
	// and its lock taken before the cordon, and released only once the
	// member reads again after the reboot.
	Etcd    *etcdguard.Options
	EtcdTTL time.Duration

	ConfirmTimeout time.Duration // wait for the trial's confirm (default DefaultConfirmTimeout)
	ReadyTimeout   time.Duration // wait for Ready and etcd after the reboot (default DefaultReadyTimeout)
	Poll           time.Duration // default 2 s

	// Sentinel, when set, is kured's reboot sentinel (/var/run/reboot-required
	// on the host): the agent only stages and writes it, and kured's lock
	// decides when the node drains and reboots. A stopped rollout stops
	// the staging, and a node staged but not rebooted yet cancels.
	Sentinel string

	Booted meta.Slot                       // the running slot; default stage.BootedSlot()
	Reboot func(ctx context.Context) error // reboots this machine (through its init system)
	// CanReboot, when set, says before the lock is taken whether Reboot
	// can work (an error when the host has no init system to ask): a run
	// that cannot reboot changes nothing rather than cordon and drain.
	CanReboot func() error
	Log       io.Writer
	Now       func() time.Time
}

// Outcome is what a Run did.
type Outcome string

// The outcomes.
const (
	Upgraded  Outcome = "upgraded"  // the target runs, confirmed; lock released
	Rebooting Outcome = "rebooting" // staged and rebooting into it
	Staged    Outcome = "staged"    // staged, the sentinel written: kured reboots
)

// Result is a Run's outcome with the node's state.
type Result struct {
	Outcome Outcome
	Version string
	// Slot is the slot the target goes to when Rebooting or Staged, the
	// slot that runs it when Upgraded.
	Slot   meta.Slot
	Digest string
	// Staging is how long the staging took in this run (pull, write,
	// sync): the rest of a run is the agent's own work and the drain.
	Staging time.Duration
}

func (a *Agent) defaults() {
	if a.ConfirmTimeout <= 0 {
		a.ConfirmTimeout = DefaultConfirmTimeout
	}
	if a.ReadyTimeout <= 0 {
		a.ReadyTimeout = DefaultReadyTimeout
	}
	if a.Poll <= 0 {
		a.Poll = 2 * time.Second
	}
	if a.Now == nil {
		a.Now = time.Now
	}
	if a.Log == nil {
		a.Log = io.Discard
	}
	if a.Booted == "" {
		a.Booted = stage.BootedSlot()
	}
	a.Lock.Client, a.Lock.Holder, a.Lock.Now = a.Client, a.Node, a.Now
	if a.Drain.Client == nil {
		a.Drain.Client = a.Client
	}
	if a.Drain.Out == nil {
		a.Drain.Out = a.Log
	}
}

func (a *Agent) logf(format string, args ...any) {
	fmt.Fprintf(a.Log, "stagehand: "+format+"\n", args...)
}

// step is what META says about the target on this node.
type step int

const (
	stepUpgrade    step = iota // nothing of the target yet: lock, drain, stage, reboot
	stepReboot                 // staged, not yet booted: reboot
	stepTrial                  // the target runs on trial: wait for its confirm
	stepDone                   // the target runs, confirmed
	stepRolledBack             // the target was tried and given up
	stepApplying               // the early boot has not finished: not for a running system
	stepOffActive              // the system runs a slot META holds neither active nor on trial
)

// next reads META's slot states for digest as seen from booted.
func next(st *stage.Status, digest string) (step, *meta.SlotState) {
	sl := st.Slots
	act := sl.State(sl.Active)
	if st.OffActive != "" {
		// Picked by hand, say: staging would target the slot that runs.
		return stepOffActive, sl.State(st.Booted)
	}
	switch {
	case sl.Phase == meta.PhaseTrial && sl.State(sl.Trial).Digest == digest:
		if st.Booted == sl.Trial {
			return stepTrial, sl.State(sl.Trial)
		}
		return stepApplying, sl.State(sl.Trial)
	case sl.Phase == meta.PhaseApplying:
		return stepApplying, sl.State(sl.Active.Other())
	case act.Digest == digest && act.State == "good" && (st.Booted == "" || st.Booted == sl.Active):
		return stepDone, act
	case st.Staged != nil && st.Staged.Digest == digest:
		return stepReboot, nil
	}
	for _, s := range []meta.Slot{meta.SlotA, meta.SlotB} {
		if ss := sl.State(s); ss.State == "bad" && ss.Digest == digest {
			return stepRolledBack, ss
		}
	}
	return stepUpgrade, nil
}

// Run does this node's next step of the upgrade to a.Stage.Image.
func (a *Agent) Run(ctx context.Context) (*Result, error) {
	a.defaults()
	if _, err := stage.ParseSource(a.Stage.Image, a.Stage.Insecure); err != nil {
		return nil, err
	}
	node, err := a.node(ctx)
	if err != nil {
		return nil, err
	}
	st, err := a.status(ctx)
	if err != nil {
		return nil, err
	}
	digest := node.Annotations[AnnTargetDigest]
	if node.Annotations[AnnTarget] != a.Stage.Image || digest == "" {
		if digest, err = stage.Resolve(ctx, a.Stage); err != nil {
			return nil, fmt.Errorf("resolving %s: %w", a.Stage.Image, err)
		}
	}
	s, ss := next(st, digest)
	if s == stepTrial {
		if st, err = a.waitConfirm(ctx, st); err != nil {
			return nil, err
		}
		s, ss = next(st, digest)
	}
	res := &Result{Digest: digest, Slot: st.Slots.Active}
	if ss != nil {
		res.Version = ss.Version
	}
	if err := a.record(ctx, st, s); err != nil {
		return nil, err
	}
	if s != stepReboot && s != stepUpgrade {
		a.clearSentinel()
	}
	if a.Sentinel != "" && (s == stepReboot || s == stepUpgrade) {
		res.Outcome = Staged
		if s == stepReboot {
			res.Slot = st.Staged.Target
		}
		return res, a.stageForKured(ctx, node, res, digest, s == stepReboot)
	}
	switch s {
	case stepDone:
		res.Outcome = Upgraded
		return res, a.finish(ctx, node, res)
	case stepRolledBack:
		return nil, a.rolledBack(ctx, node, digest, ss)
	case stepOffActive:
		return nil, fmt.Errorf("%w: %s; reboot into slot %s first", ErrNotDone, st.OffActive, st.Slots.Active)
	case stepApplying, stepTrial:
		return nil, fmt.Errorf("%w: META on %s is %s (slot %s) while this system runs slot %s: the early boot did not finish; see stager status", ErrNotDone, st.Disk, st.Slots.Phase, st.Slots.Active, st.Booted)
	case stepReboot:
		// Staged by an earlier run that did not reboot: only with the lock.
		if err := a.canReboot(); err != nil {
			return nil, err
		}
		if err := a.acquire(ctx, node); err != nil {
			return nil, err
		}
		res.Outcome, res.Slot = Rebooting, st.Staged.Target
		return res, a.reboot(ctx, node, digest)
	}
	if err := a.canReboot(); err != nil {
		return nil, err
	}
	res.Outcome = Rebooting
	return res, a.upgrade(ctx, node, res)
}

func (a *Agent) node(ctx context.Context) (*corev1.Node, error) {
	n, err := a.Client.CoreV1().Nodes().Get(ctx, a.Node, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("%w: node %q does not exist: pass --node the name `kubectl get nodes` shows (SUC sets SYSTEM_UPGRADE_NODE_NAME)", ErrAPI, a.Node)
	}
	return n, apiError("node "+a.Node, err)
}

func (a *Agent) status(ctx context.Context) (*stage.Status, error) {
	st, err := stage.ReadStatus(ctx, a.Stage.Disk)
	if err != nil {
		return nil, err
	}
	st.SetBooted(a.Booted)
	return st, nil
}

// record writes META's view to the node's labels and annotations.
func (a *Agent) record(ctx context.Context, st *stage.Status, s step) error {
	sl := st.Slots
	booted, run := st.Running()
	phase := string(sl.Phase)
	if s == stepRolledBack {
		phase = "rolled-back"
	}
	labels := map[string]*string{LabelVersion: str(labelValue(run.Version)), LabelSlot: str(string(booted)), LabelPhase: str(phase)}
	ann := map[string]*string{}
	if n := len(st.Transitions); n > 0 {
		t := st.Transitions[n-1]
		ann[AnnLastTransition] = str(fmt.Sprintf("%s %s -> %s", t.Time.UTC().Format(time.RFC3339), t.From, t.To))
		ann[AnnReason] = str(t.Reason)
	}
	return patchNode(ctx, a.Client, a.Node, labels, ann)
}

// waitConfirm waits while the target runs on trial for its health checks
// to confirm it (or give it up).
func (a *Agent) waitConfirm(ctx context.Context, st *stage.Status) (*stage.Status, error) {
	a.logf("slot %s runs on trial: waiting up to %s for its confirm", st.Slots.Trial, a.ConfirmTimeout)
	deadline := a.Now().Add(a.ConfirmTimeout)
	for st.Slots.Phase == meta.PhaseTrial {
		if a.Now().After(deadline) {
			return nil, fmt.Errorf("%w: slot %s still on trial after %s: its health checks have not confirmed it (see stager status and journalctl -u stagehand-confirm); the upgrade lock stays held", ErrNotDone, st.Slots.Trial, a.ConfirmTimeout)
		}
		if err := sleep(ctx, a.Poll); err != nil {
			return nil, err
		}
		var err error
		if st, err = a.status(ctx); err != nil {
			return nil, err
		}
	}
	return st, nil
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func (a *Agent) controlPlane(n *corev1.Node) bool {
	_, ok := n.Labels[ControlPlaneLabel]
	return ok && a.Etcd != nil
}

// acquire takes (or renews) the fleet lock and, on a control-plane node,
// the etcd guard's lock. When the fleet lock is not this node's, a cordon
// and a staging of an earlier run of ours are undone: the node must not
// go down without the lock.
func (a *Agent) acquire(ctx context.Context, node *corev1.Node) error {
	lease, err := a.Lock.Acquire(ctx)
	if err != nil {
		a.undo(ctx, node)
		return err
	}
	a.logf("holding the fleet upgrade lock (lease %s/%s)", a.Lock.Namespace, lease)
	if a.controlPlane(node) {
		o := *a.Etcd
		o.Member = cmp.Or(o.Member, a.Node)
		if _, err := etcdguard.Acquire(ctx, o, a.Node, a.EtcdTTL); err != nil {
			a.undo(ctx, node)
			if rerr := a.Lock.Release(ctx); rerr != nil {
				a.logf("releasing the fleet lock: %v", rerr)
			}
			return err
		}
		a.logf("etcd guard: cluster healthy without member %s; holding the etcd upgrade lock", o.Member)
	}
	return nil
}

// undo drops what an earlier run of ours left without the lock: a staged
// target, our cordon.
func (a *Agent) undo(ctx context.Context, node *corev1.Node) {
	ctx = context.WithoutCancel(ctx)
	if node.Annotations[AnnTargetDigest] != "" {
		if st, err := a.status(ctx); err == nil && st.Staged != nil && st.Staged.Digest == node.Annotations[AnnTargetDigest] {
			if _, err := stage.Cancel(ctx, a.Stage.Disk, a.Now()); err != nil {
				a.logf("cancelling the staged %s: %v", st.Staged.Image, err)
			} else {
				a.logf("cancelled the staged %s: the node has no lock to reboot with", st.Staged.Image)
			}
		}
	}
	a.uncordon(ctx, node)
}

// uncordon makes the node schedulable again if stagehand cordoned it.
func (a *Agent) uncordon(ctx context.Context, node *corev1.Node) {
	if node.Annotations[AnnCordoned] != "true" {
		return
	}
	n, err := a.node(ctx)
	if err == nil {
		err = a.Drain.Cordon(ctx, n, false)
	}
	if err == nil {
		err = patchNode(ctx, a.Client, a.Node, nil, map[string]*string{AnnCordoned: nil})
	}
	if err != nil {
		a.logf("uncordoning node %s: %v", a.Node, err)
		return
	}
	a.logf("uncordoned node %s", a.Node)
}

// release gives up the etcd lock (once the member reads again: bounded by
// ReadyTimeout) and then the fleet lock.
func (a *Agent) release(ctx context.Context, node *corev1.Node) error {
	if a.controlPlane(node) {
		o := *a.Etcd
		o.Member = cmp.Or(o.Member, a.Node)
		deadline := a.Now().Add(a.ReadyTimeout)
		for {
			_, err := etcdguard.Release(ctx, o, a.Node)
			if err == nil {
				break
			}
			if !errors.Is(err, etcdguard.ErrNotHealthy) || a.Now().After(deadline) {
				return fmt.Errorf("%w: %w", ErrNotDone, err)
			}
			if err := sleep(ctx, a.Poll); err != nil {
				return err
			}
		}
	}
	return a.Lock.Release(ctx)
}

// finish ends an upgrade that runs confirmed: once the node is Ready again
// in a boot after the one that rebooted for it, it is uncordoned and the
// locks are released.
func (a *Agent) finish(ctx context.Context, node *corev1.Node, res *Result) error {
	held, err := a.Lock.Held(ctx)
	if err != nil {
		return err
	}
	if !held && node.Annotations[AnnCordoned] != "true" && node.Annotations[AnnTarget] == "" {
		return nil // up to date, nothing of ours pending
	}
	deadline := a.Now().Add(a.ReadyTimeout)
	for !ready(node) || node.Annotations[AnnBootID] != "" && node.Status.NodeInfo.BootID == node.Annotations[AnnBootID] {
		if a.Now().After(deadline) {
			return fmt.Errorf("%w: node %s runs %s confirmed but is not Ready in a new boot after %s: the upgrade lock stays held", ErrNotDone, a.Node, res.Version, a.ReadyTimeout)
		}
		if err := sleep(ctx, a.Poll); err != nil {
			return err
		}
		if node, err = a.node(ctx); err != nil {
			return err
		}
	}
	a.uncordon(ctx, node)
	if err := a.release(ctx, node); err != nil {
		return err
	}
	if err := patchNode(ctx, a.Client, a.Node, nil, map[string]*string{AnnTarget: nil, AnnTargetDigest: nil, AnnBootID: nil}); err != nil {
		return err
	}
	a.logf("node %s runs %s (%s) on slot %s, confirmed and Ready: upgrade lock released", a.Node, res.Version, res.Digest, res.Slot)
	return event(ctx, a.Client, node, corev1.EventTypeNormal, "Upgraded", fmt.Sprintf("runs %s (%s) on slot %s, confirmed", res.Version, res.Digest, res.Slot), a.Now())
}

// rolledBack records on the node and in an Event that the target was
// given up, uncordons it (the old version serves) and stops the rollout.
func (a *Agent) rolledBack(ctx context.Context, node *corev1.Node, digest string, ss *meta.SlotState) error {
	msg := fmt.Sprintf("node %s rolled back from %s %s: %s", a.Node, cmp.Or(ss.Version, a.Stage.Image), digest, cmp.Or(ss.Reason, "no reason recorded"))
	if node.Annotations[AnnRolledBackFrom] != digest {
		if err := patchNode(ctx, a.Client, a.Node, nil, map[string]*string{AnnRolledBackFrom: str(digest)}); err != nil {
			return err
		}
		if err := event(ctx, a.Client, node, corev1.EventTypeWarning, "RolledBack", msg, a.Now()); err != nil {
			return err
		}
	}
	if err := a.Lock.Stop(ctx, msg); err != nil {
		return err
	}
	a.uncordon(ctx, node)
	if err := a.release(ctx, node); err != nil {
		a.logf("releasing the locks: %v", err)
	}
	// The phase label too: record wrote it before a staging that found
	// the target rolled back (see stage).
	if err := patchNode(ctx, a.Client, a.Node, map[string]*string{LabelPhase: str("rolled-back")}, map[string]*string{AnnTarget: nil, AnnTargetDigest: nil, AnnBootID: nil}); err != nil {
		return err
	}
	return &rolledBackError{msg}
}

// rolledBackError is ErrRolledBack with what the node recorded.
type rolledBackError struct{ msg string }

func (e *rolledBackError) Error() string {
	return e.msg + "; the rollout is stopped (stagehand-agent node resume starts it again)"
}
func (e *rolledBackError) Unwrap() error { return ErrRolledBack }

// canReboot refuses a run that could not reboot once it has drained:
// nothing is taken, cordoned or staged yet.
func (a *Agent) canReboot() error {
	if a.Reboot == nil {
		return errors.New("no way to reboot this machine")
	}
	if a.CanReboot == nil {
		return nil
	}
	if err := a.CanReboot(); err != nil {
		return fmt.Errorf("%w; node %s left as it was: not cordoned, no lock taken", err, a.Node)
	}
	return nil
}

// upgrade takes the locks, cordons, drains, stages and reboots.
func (a *Agent) upgrade(ctx context.Context, node *corev1.Node, out *Result) error {
	if err := a.acquire(ctx, node); err != nil {
		return err
	}
	fail := func(err error) error {
		a.uncordon(context.WithoutCancel(ctx), node)
		if rerr := a.release(context.WithoutCancel(ctx), node); rerr != nil {
			a.logf("releasing the locks: %v", rerr)
		}
		return fmt.Errorf("%w; node %s uncordoned, upgrade lock released", err, a.Node)
	}
	if !node.Spec.Unschedulable {
		// Recorded first: a crash between the two leaves a note that
		// uncordons nothing, never a cordon nobody undoes.
		if err := patchNode(ctx, a.Client, a.Node, nil, map[string]*string{AnnCordoned: str("true")}); err != nil {
			return fail(err)
		}
		if node.Annotations == nil {
			node.Annotations = map[string]string{}
		}
		node.Annotations[AnnCordoned] = "true"
		if err := a.Drain.Cordon(ctx, node, true); err != nil {
			return fail(err)
		}
		a.logf("cordoned node %s", a.Node)
	}
	if err := a.Drain.Drain(ctx, a.Node); err != nil {
		return fail(err)
	}
	a.logf("drained node %s", a.Node)
	if _, err := a.Lock.Acquire(ctx); err != nil { // renew before the long part
		return fail(err)
	}
	start := time.Now()
	staged, err := a.stage(ctx)
	out.Staging = time.Since(start)
	var rb *stage.RolledBackError
	if errors.As(err, &rb) {
		return a.rolledBack(ctx, node, rb.State.Digest, &rb.State)
	}
	if err != nil {
		return fail(err)
	}
	out.Slot = staged.Target
	return a.reboot(ctx, node, staged.Digest)
}

// stage stages the target and returns what it staged: the tag may
// have moved since it was resolved, even to a digest that rolled back on
// this node, which stage refuses (a *stage.RolledBackError, unless
// a.Stage.Retry): the callers then stop the rollout as next's
// stepRolledBack does, rather than fail a run that the Job would repeat.
func (a *Agent) stage(ctx context.Context) (*meta.Staged, error) {
	o := a.Stage
	o.Logf = func(f string, args ...any) { a.logf(f, args...) }
	res, err := stage.Stage(ctx, o)
	if err != nil {
		return nil, fmt.Errorf("staging %s: %w", a.Stage.Image, err)
	}
	a.logf("staged %s (%s) for slot %s", res.Staged.Image, res.Staged.Digest, res.Staged.Target)
	return res.Staged, nil
}

// recordTarget records on the node the target it goes to and the boot it
// leaves: a run after the reboot knows the target without the registry,
// and tells the new boot from the old.
func (a *Agent) recordTarget(ctx context.Context, node *corev1.Node, digest string) error {
	ann := map[string]*string{AnnTarget: str(a.Stage.Image), AnnTargetDigest: str(digest), AnnBootID: str(node.Status.NodeInfo.BootID)}
	return patchNode(ctx, a.Client, a.Node, map[string]*string{LabelPhase: str(string(meta.PhaseStaged))}, ann)
}

// reboot records the target and the boot it leaves, then reboots.
func (a *Agent) reboot(ctx context.Context, node *corev1.Node, digest string) error {
	if err := a.recordTarget(ctx, node, digest); err != nil {
		return err
	}
	if err := event(ctx, a.Client, node, corev1.EventTypeNormal, "Rebooting", "rebooting into "+a.Stage.Image+" "+digest, a.Now()); err != nil {
		return err
	}
	a.logf("rebooting node %s into %s", a.Node, a.Stage.Image)
	if a.Reboot == nil {
		return errors.New("no way to reboot this machine")
	}
	return a.Reboot(ctx)
}

// stageForKured stages (unless staged already) and writes kured's sentinel;
// while the rollout is stopped it stages nothing, and drops what it staged.
func (a *Agent) stageForKured(ctx context.Context, node *corev1.Node, res *Result, digest string, staged bool) error {
	stop, err := a.Lock.Stopped(ctx)
	if err != nil {
		return err
	}
	if stop != nil {
		a.clearSentinel()
		a.undo(ctx, node)
		return &StoppedError{*stop}
	}
	if !staged {
		s, err := a.stage(ctx)
		var rb *stage.RolledBackError
		if errors.As(err, &rb) {
			a.clearSentinel()
			return a.rolledBack(ctx, node, rb.State.Digest, &rb.State)
		}
		if err != nil {
			return err
		}
		digest, res.Slot = s.Digest, s.Target
	}
	if err := a.recordTarget(ctx, node, digest); err != nil {
		return err
	}
	if _, err := os.Stat(a.Sentinel); err == nil {
		return nil
	}
	if err := os.WriteFile(a.Sentinel, nil, 0o644); err != nil {
		return fmt.Errorf("writing kured's sentinel: %w", err)
	}
	a.logf("wrote %s: kured reboots node %s when its lock allows", a.Sentinel, a.Node)
	return event(ctx, a.Client, node, corev1.EventTypeNormal, "Staged", "staged "+a.Stage.Image+" "+digest+"; kured reboots the node", a.Now())
}

// clearSentinel removes kured's sentinel if this agent uses one.
func (a *Agent) clearSentinel() {
	if a.Sentinel == "" {
		return
	}
	if err := os.Remove(a.Sentinel); err == nil {
		a.logf("removed %s", a.Sentinel)
	}
}
