package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// ctrState is one container of a pod: its spec and what the runner knows of it.
type ctrState struct {
	spec         v1.Container
	init         bool
	restartCount int32
	state        v1.ContainerState
	last         v1.ContainerState
	ready        bool
	started      bool
	id           string
	imageID      string
	exited       bool  // the current instance has exited
	exitCode     int32 // of the last exit
	pid          int
	env          []string // of the running instance (for exec probes)
}

// podWorker runs one pod of the node, from setup to deletion.
type podWorker struct {
	r        *runner
	uid      types.UID
	ns, name string
	dir      string // DIR/pods/<uid>
	wake     chan struct{}

	mu           sync.Mutex
	pod          *v1.Pod
	inits, ctrs  []*ctrState
	startTime    metav1.Time
	volumesReady bool
	initDone     bool
	terminal     v1.PodPhase
	grace        time.Duration
	conds        map[v1.PodConditionType]v1.PodCondition
	vols         map[string]*volInfo

	statusMu   sync.Mutex
	lastStatus *v1.PodStatus
}

func newPodWorker(r *runner, p *v1.Pod) *podWorker {
	w := &podWorker{r: r, uid: p.UID, ns: p.Namespace, name: p.Name, pod: p.DeepCopy(),
		dir: filepath.Join(r.podDir, string(p.UID)), wake: make(chan struct{}, 1),
		conds: map[v1.PodConditionType]v1.PodCondition{}, vols: map[string]*volInfo{}}
	old := map[string]v1.ContainerStatus{}
	for _, s := range append(append([]v1.ContainerStatus(nil), p.Status.InitContainerStatuses...), p.Status.ContainerStatuses...) {
		old[s.Name] = s
	}
	mk := func(c v1.Container, init bool) *ctrState {
		cs := &ctrState{spec: c, init: init,
			state: v1.ContainerState{Waiting: &v1.ContainerStateWaiting{Reason: "ContainerCreating"}}}
		if init || len(p.Spec.InitContainers) > 0 {
			cs.state.Waiting.Reason = "PodInitializing"
		}
		if s, ok := old[c.Name]; ok {
			// A runner restart: the count goes on, the last state is kept.
			cs.restartCount = s.RestartCount
			if s.State.Terminated != nil {
				cs.last = v1.ContainerState{Terminated: s.State.Terminated}
			} else {
				cs.last = s.LastTerminationState
			}
		}
		return cs
	}
	for _, c := range p.Spec.InitContainers {
		w.inits = append(w.inits, mk(c, true))
	}
	for _, c := range p.Spec.Containers {
		w.ctrs = append(w.ctrs, mk(c, false))
	}
	if p.Status.StartTime != nil {
		w.startTime = *p.Status.StartTime
	} else {
		w.startTime = metav1.Now()
	}
	return w
}

func (w *podWorker) wakeUp() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

func (w *podWorker) logf(format string, a ...any) {
	log.Printf("pod %s/%s: %s", w.ns, w.name, fmt.Sprintf(format, a...))
}

// current: the pod as the informer has it; gone if deleted (or replaced).
func (w *podWorker) current() (*v1.Pod, bool) {
	p, err := w.r.pods.Pods(w.ns).Get(w.name)
	if err != nil || p.UID != w.uid {
		return nil, true
	}
	return p, false
}

func gracePeriod(p *v1.Pod) time.Duration {
	if p != nil && p.DeletionGracePeriodSeconds != nil {
		return time.Duration(*p.DeletionGracePeriodSeconds) * time.Second
	}
	if p != nil && p.Spec.TerminationGracePeriodSeconds != nil {
		return time.Duration(*p.Spec.TerminationGracePeriodSeconds) * time.Second
	}
	return 30 * time.Second
}

// loop waits for the pod's deletion (or the runner's stop) while run runs it.
func (w *podWorker) loop() {
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	done := make(chan struct{})
	p, _ := w.current()
	if p != nil && (p.Status.Phase == v1.PodSucceeded || p.Status.Phase == v1.PodFailed) {
		// Finished before (a runner restart): nothing to run again.
		w.terminal = p.Status.Phase
		close(done)
	} else {
		go func() { defer close(done); w.run(ctx) }()
	}
	finished := done
	for {
		select {
		case <-w.wake:
		case <-finished:
			finished = nil
			continue
		}
		p, gone := w.current()
		stopping := w.r.isStopping()
		if !gone && p.DeletionTimestamp == nil && !stopping {
			w.mu.Lock()
			w.pod = p.DeepCopy()
			w.mu.Unlock()
			continue
		}
		grace := gracePeriod(p)
		if stopping && grace > 5*time.Second {
			grace = 5 * time.Second
		}
		w.mu.Lock()
		w.grace = grace
		w.mu.Unlock()
		w.logf("stopping (deleted=%v, runner stopping=%v, grace %s)", gone || p.DeletionTimestamp != nil, stopping, grace)
		stop()
		<-done
		w.teardownVolumes()
		if stopping {
			return
		}
		w.r.finished(w.uid)
		if !gone {
			zero := int64(0)
			err := w.r.cs.CoreV1().Pods(w.ns).Delete(context.Background(), w.name,
				metav1.DeleteOptions{GracePeriodSeconds: &zero, Preconditions: &metav1.Preconditions{UID: &w.uid}})
			if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
				w.logf("deleting: %v", err)
			}
		}
		if anyMountUnder(w.dir) {
			w.logf("keeping %s: something is still mounted under it", w.dir)
		} else {
			os.RemoveAll(w.dir)
		}
		w.logf("stopped and deleted")
		return
	}
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// setAllWaiting sets every container not yet run to waiting with reason and message.
func (w *podWorker) setAllWaiting(reason, msg string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, c := range append(append([]*ctrState(nil), w.inits...), w.ctrs...) {
		if c.state.Waiting != nil {
			c.state.Waiting = &v1.ContainerStateWaiting{Reason: reason, Message: msg}
		}
	}
}

// run runs the pod: volumes, init containers in order, then the containers.
func (w *podWorker) run(ctx context.Context) {
	w.pushStatus()
	lastErr := ""
	for {
		err := w.setupVolumes(ctx)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return
		}
		if err.Error() != lastErr {
			w.logf("volumes: %v (retrying every 2s)", err)
			lastErr = err.Error()
		}
		w.setAllWaiting("ContainerCreating", "volumes not ready: "+err.Error())
		w.pushStatus()
		if !sleepCtx(ctx, 2*time.Second) {
			return
		}
	}
	w.mu.Lock()
	w.volumesReady = true
	policy := w.pod.Spec.RestartPolicy
	w.mu.Unlock()
	w.pushStatus()

	for _, c := range w.inits {
		backoff := time.Second
		for {
			code, ok := w.runContainer(ctx, c)
			if !ok {
				return
			}
			if code == 0 {
				break
			}
			if policy == v1.RestartPolicyNever {
				w.mu.Lock()
				w.terminal = v1.PodFailed
				w.mu.Unlock()
				w.pushStatus()
				w.teardownVolumes()
				return
			}
			if !w.backoff(ctx, c, &backoff) {
				return
			}
		}
	}
	w.mu.Lock()
	w.initDone = true
	for _, c := range w.ctrs {
		if c.state.Waiting != nil && c.state.Waiting.Reason == "PodInitializing" {
			c.state.Waiting.Reason = "ContainerCreating"
		}
	}
	w.mu.Unlock()
	w.pushStatus()

	var wg sync.WaitGroup
	for _, c := range w.ctrs {
		wg.Add(1)
		go func(c *ctrState) {
			defer wg.Done()
			backoff := time.Second
			for {
				code, ok := w.runContainer(ctx, c)
				if !ok {
					return
				}
				if policy == v1.RestartPolicyNever || (policy == v1.RestartPolicyOnFailure && code == 0) {
					return
				}
				if !w.backoff(ctx, c, &backoff) {
					return
				}
			}
		}(c)
	}
	wg.Wait()
	if ctx.Err() != nil {
		return
	}
	phase := v1.PodSucceeded
	w.mu.Lock()
	for _, c := range w.ctrs {
		if c.exitCode != 0 {
			phase = v1.PodFailed
		}
	}
	w.terminal = phase
	w.mu.Unlock()
	w.logf("%s", phase)
	w.pushStatus()
	// A finished pod's volumes are unmounted, as kubelet does.
	w.teardownVolumes()
}

// backoff waits before a restart (CrashLoopBackOff), doubling up to 20s.
func (w *podWorker) backoff(ctx context.Context, c *ctrState, d *time.Duration) bool {
	w.mu.Lock()
	c.last = c.state
	c.restartCount++
	c.state = v1.ContainerState{Waiting: &v1.ContainerStateWaiting{Reason: "CrashLoopBackOff",
		Message: fmt.Sprintf("back-off %s restarting failed container=%s pod=%s_%s(%s)", *d, c.spec.Name, w.name, w.ns, w.uid)}}
	w.mu.Unlock()
	w.pushStatus()
	ok := sleepCtx(ctx, *d)
	if *d *= 2; *d > 20*time.Second {
		*d = 20 * time.Second
	}
	return ok
}

// --- status ------------------------------------------------------------------

func (w *podWorker) phaseLocked() v1.PodPhase {
	if w.terminal != "" {
		return w.terminal
	}
	if !w.initDone {
		return v1.PodPending
	}
	running, waiting, stopped, succeeded := 0, 0, 0, 0
	for _, c := range w.ctrs {
		switch {
		case c.state.Running != nil:
			running++
		case c.state.Terminated != nil:
			stopped++
			if c.state.Terminated.ExitCode == 0 {
				succeeded++
			}
		case c.last.Terminated != nil:
			stopped++
			if c.last.Terminated.ExitCode == 0 {
				succeeded++
			}
		default:
			waiting++
		}
	}
	switch {
	case waiting > 0:
		return v1.PodPending
	case running > 0:
		return v1.PodRunning
	case w.pod.Spec.RestartPolicy == v1.RestartPolicyNever && stopped == succeeded:
		return v1.PodSucceeded
	case w.pod.Spec.RestartPolicy == v1.RestartPolicyNever:
		return v1.PodFailed
	default:
		return v1.PodRunning
	}
}

func (w *podWorker) setCond(t v1.PodConditionType, ok bool, reason, msg string) v1.PodCondition {
	s := v1.ConditionFalse
	if ok {
		s = v1.ConditionTrue
		reason, msg = "", ""
	}
	c, had := w.conds[t]
	if !had || c.Status != s {
		c.LastTransitionTime = metav1.Now()
	}
	c.Type, c.Status, c.Reason, c.Message = t, s, reason, msg
	w.conds[t] = c
	return c
}

func (w *podWorker) ctrStatus(c *ctrState) v1.ContainerStatus {
	started := c.started
	return v1.ContainerStatus{Name: c.spec.Name, Image: c.spec.Image, ImageID: c.imageID, ContainerID: c.id,
		State: *c.state.DeepCopy(), LastTerminationState: *c.last.DeepCopy(), Ready: c.ready,
		RestartCount: c.restartCount, Started: &started}
}

func (w *podWorker) buildStatus() v1.PodStatus {
	w.mu.Lock()
	defer w.mu.Unlock()
	st := v1.PodStatus{Phase: w.phaseLocked(), HostIP: nodeIP, HostIPs: []v1.HostIP{{IP: nodeIP}},
		PodIP: nodeIP, PodIPs: []v1.PodIP{{IP: nodeIP}}, StartTime: &w.startTime}
	var notReady []string
	for _, c := range w.inits {
		st.InitContainerStatuses = append(st.InitContainerStatuses, w.ctrStatus(c))
	}
	for _, c := range w.ctrs {
		st.ContainerStatuses = append(st.ContainerStatuses, w.ctrStatus(c))
		if !c.ready {
			notReady = append(notReady, c.spec.Name)
		}
	}
	terminal := st.Phase == v1.PodSucceeded || st.Phase == v1.PodFailed
	var conds []v1.PodCondition
	conds = append(conds, w.setCond(v1.PodReadyToStartContainers, w.volumesReady && !terminal, "", ""))
	var pendingInit []string
	if !w.initDone {
		for _, c := range w.inits {
			if c.state.Terminated == nil || c.state.Terminated.ExitCode != 0 {
				pendingInit = append(pendingInit, c.spec.Name)
			}
		}
	}
	conds = append(conds, w.setCond(v1.PodInitialized, len(pendingInit) == 0 || w.initDone, "ContainersNotInitialized",
		fmt.Sprintf("containers with incomplete status: [%s]", strings.Join(pendingInit, " "))))
	readyReason, readyMsg := "ContainersNotReady", fmt.Sprintf("containers with unready status: [%s]", strings.Join(notReady, " "))
	if terminal {
		readyReason, readyMsg = "PodCompleted", ""
	}
	ready := len(notReady) == 0 && !terminal
	conds = append(conds, w.setCond(v1.ContainersReady, ready, readyReason, readyMsg))
	conds = append(conds, w.setCond(v1.PodReady, ready, readyReason, readyMsg))
	conds = append(conds, w.setCond(v1.PodScheduled, true, "", ""))
	st.Conditions = conds
	return st
}

var ownConds = map[v1.PodConditionType]bool{v1.PodReadyToStartContainers: true, v1.PodInitialized: true,
	v1.ContainersReady: true, v1.PodReady: true, v1.PodScheduled: true}

// pushStatus writes the pod's status (status subresource, a merge patch with
// the pod's uid as precondition), unless it is the one written last.
func (w *podWorker) pushStatus() {
	w.statusMu.Lock()
	defer w.statusMu.Unlock()
	if w.r.isStopping() {
		// The runner stops, not the pod: its status stays as it was (as a
		// kubelet's stop leaves its pods), so a Never pod is not made Failed.
		return
	}
	st := w.buildStatus()
	if w.lastStatus != nil && reflect.DeepEqual(*w.lastStatus, st) {
		return
	}
	built := st.DeepCopy()
	if p, gone := w.current(); !gone {
		// Conditions of others (e.g. DisruptionTarget) are kept.
		for _, c := range p.Status.Conditions {
			if !ownConds[c.Type] {
				st.Conditions = append(st.Conditions, c)
			}
		}
	}
	sort.SliceStable(st.Conditions, func(i, j int) bool { return st.Conditions[i].Type < st.Conditions[j].Type })
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"uid": w.uid}, "status": st})
	for i := 0; i < 5; i++ {
		_, err := w.r.cs.CoreV1().Pods(w.ns).Patch(context.Background(), w.name, types.MergePatchType, patch, metav1.PatchOptions{}, "status")
		if err == nil {
			w.lastStatus = built
			return
		}
		if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
			return
		}
		w.logf("status update: %v", err)
		time.Sleep(500 * time.Millisecond)
	}
}
