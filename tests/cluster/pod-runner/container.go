package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

func numCPU() int                { return runtime.NumCPU() }
func sortStrings(s []string)     { sort.Strings(s) }
func ctrDir(w *podWorker) string { return filepath.Join(w.dir, "containers") }

// imageEntrypoint looks image up in the image map (re-read each time): the
// host binary standing for the image's entrypoint, or "".
func imageEntrypoint(image string) (string, error) {
	f, err := os.Open(*imagesFile)
	if os.IsNotExist(err) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	defer f.Close()
	best, bin := "", ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fs := strings.Fields(line)
		if len(fs) < 2 {
			continue
		}
		if strings.HasPrefix(image, fs[0]) && len(fs[0]) > len(best) {
			best, bin = fs[0], strings.Join(fs[1:], " ")
		}
	}
	return bin, sc.Err()
}

// expand replaces $(VAR) by VAR's value as Kubernetes does ($$ is a literal $;
// an unknown reference stays as written).
func expand(s string, env map[string]string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' || i+1 >= len(s) {
			b.WriteByte(s[i])
			continue
		}
		switch s[i+1] {
		case '$':
			b.WriteByte('$')
			i++
		case '(':
			end := strings.IndexByte(s[i+2:], ')')
			if end < 0 {
				b.WriteString(s[i:])
				return b.String()
			}
			name := s[i+2 : i+2+end]
			if v, ok := env[name]; ok {
				b.WriteString(v)
			} else {
				b.WriteString(s[i : i+3+end])
			}
			i += 2 + end
		default:
			b.WriteByte('$')
		}
	}
	return b.String()
}

type configError struct{ msg string }

func (e configError) Error() string { return e.msg }

// buildEnv: the container's environment, as kubelet builds it (service
// variables of the kubernetes Service first, envFrom, then env).
func (w *podWorker) buildEnv(ctx context.Context, pod *v1.Pod, c v1.Container) ([]string, map[string]string, error) {
	var order []string
	m := map[string]string{}
	set := func(k, v string) {
		if _, ok := m[k]; !ok {
			order = append(order, k)
		}
		m[k] = v
	}
	set("KUBERNETES_SERVICE_HOST", nodeIP)
	set("KUBERNETES_SERVICE_PORT", *apiserverPort)
	for _, ef := range c.EnvFrom {
		var data map[string][]byte
		var err error
		switch {
		case ef.SecretRef != nil:
			data, _, err = w.secretData(ctx, ef.SecretRef.Name, ef.SecretRef.Optional != nil && *ef.SecretRef.Optional)
		case ef.ConfigMapRef != nil:
			data, _, err = w.configMapData(ctx, ef.ConfigMapRef.Name, ef.ConfigMapRef.Optional != nil && *ef.ConfigMapRef.Optional)
		}
		if err != nil {
			return nil, nil, configError{err.Error()}
		}
		keys := make([]string, 0, len(data))
		for k := range data {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			set(ef.Prefix+k, string(data[k]))
		}
	}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom == nil:
			set(e.Name, expand(e.Value, m))
		case e.ValueFrom.SecretKeyRef != nil:
			r := e.ValueFrom.SecretKeyRef
			opt := r.Optional != nil && *r.Optional
			data, found, err := w.secretData(ctx, r.Name, opt)
			if err != nil {
				return nil, nil, configError{err.Error()}
			}
			v, ok := data[r.Key]
			if !ok && found && !opt {
				return nil, nil, configError{fmt.Sprintf("couldn't find key %s in Secret %s/%s", r.Key, w.ns, r.Name)}
			}
			if ok {
				set(e.Name, string(v))
			}
		case e.ValueFrom.ConfigMapKeyRef != nil:
			r := e.ValueFrom.ConfigMapKeyRef
			opt := r.Optional != nil && *r.Optional
			data, found, err := w.configMapData(ctx, r.Name, opt)
			if err != nil {
				return nil, nil, configError{err.Error()}
			}
			v, ok := data[r.Key]
			if !ok && found && !opt {
				return nil, nil, configError{fmt.Sprintf("couldn't find key %s in ConfigMap %s/%s", r.Key, w.ns, r.Name)}
			}
			if ok {
				set(e.Name, string(v))
			}
		case e.ValueFrom.FieldRef != nil:
			v, err := fieldValue(pod, e.ValueFrom.FieldRef.FieldPath)
			if err != nil {
				return nil, nil, configError{err.Error()}
			}
			set(e.Name, v)
		case e.ValueFrom.ResourceFieldRef != nil:
			ref := *e.ValueFrom.ResourceFieldRef
			if ref.ContainerName == "" {
				ref.ContainerName = c.Name
			}
			v, err := resourceValue(pod, &ref)
			if err != nil {
				return nil, nil, configError{err.Error()}
			}
			set(e.Name, v)
		default:
			return nil, nil, configError{fmt.Sprintf("env %s: valueFrom source not supported by the pod runner", e.Name)}
		}
	}
	if _, ok := m["PATH"]; !ok {
		set("PATH", defaultPath)
	}
	if _, ok := m["HOME"]; !ok {
		set("HOME", "/root")
	}
	if _, ok := m["HOSTNAME"]; !ok {
		set("HOSTNAME", pod.Name)
	}
	out := make([]string, 0, len(order))
	for _, k := range order {
		out = append(out, k+"="+m[k])
	}
	return out, m, nil
}

// lookPath finds file in the container's PATH (on the host's filesystem).
func lookPath(file, path string) (string, error) {
	if strings.Contains(file, "/") {
		return file, nil
	}
	for _, d := range filepath.SplitList(path) {
		if d == "" {
			d = "."
		}
		p := filepath.Join(d, file)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("exec: %q: executable file not found in $PATH", file)
}

// logFile: the log of a container's instance n.
func (w *podWorker) logFile(name string, n int32) string {
	return filepath.Join(w.dir, "logs", name, strconv.Itoa(int(n))+".log")
}

// runContainer runs one instance of c until it exits (exit code, true) or
// ctx ends (the instance is stopped: SIGTERM to its process group, SIGKILL
// after the grace period; false).
func (w *podWorker) runContainer(ctx context.Context, c *ctrState) (int32, bool) {
	for {
		code, retry, ok := w.startContainer(ctx, c)
		if !retry {
			return code, ok
		}
		if !sleepCtx(ctx, 2*time.Second) {
			return 0, false
		}
	}
}

func (w *podWorker) waiting(c *ctrState, reason, msg string) {
	w.mu.Lock()
	c.state = v1.ContainerState{Waiting: &v1.ContainerStateWaiting{Reason: reason, Message: msg}}
	w.mu.Unlock()
	w.pushStatus()
}

// terminate records an exit of c's instance.
func (w *podWorker) terminate(c *ctrState, code int32, reason, msg string, started, finished time.Time) {
	w.mu.Lock()
	c.state = v1.ContainerState{Terminated: &v1.ContainerStateTerminated{ExitCode: code, Reason: reason, Message: msg,
		StartedAt: metav1.NewTime(started), FinishedAt: metav1.NewTime(finished), ContainerID: c.id}}
	c.ready = false
	c.started = false
	c.exitCode = code
	c.pid = 0
	w.mu.Unlock()
	w.pushStatus()
}

// startContainer: retry is true for a configuration error (waiting, retried).
func (w *podWorker) startContainer(ctx context.Context, c *ctrState) (code int32, retry, ok bool) {
	w.mu.Lock()
	pod := w.pod.DeepCopy()
	n := c.restartCount
	vols := map[string]*volInfo{}
	for k, v := range w.vols {
		vols[k] = v
	}
	w.mu.Unlock()
	spec := c.spec
	env, envMap, err := w.buildEnv(ctx, pod, spec)
	if err != nil {
		if ctx.Err() != nil {
			return 0, false, false
		}
		w.mu.Lock()
		same := c.state.Waiting != nil && c.state.Waiting.Message == err.Error()
		w.mu.Unlock()
		if !same {
			w.logf("container %s: %v (retrying every 2s)", spec.Name, err)
		}
		w.waiting(c, "CreateContainerConfigError", err.Error())
		return 0, true, true
	}
	cid := fmt.Sprintf("lifeboat://%s-%s-%d", w.uid, spec.Name, n)
	w.mu.Lock()
	c.id = cid
	w.mu.Unlock()
	now := time.Now()
	startErr := func(msg string) (int32, bool, bool) {
		w.logf("container %s: %s", spec.Name, msg)
		w.terminate(c, 128, "StartError", msg, now, now)
		return 128, false, true
	}
	entry, err := imageEntrypoint(spec.Image)
	if err != nil {
		return startErr(fmt.Sprintf("reading the image map %s: %v", *imagesFile, err))
	}
	var argv []string
	for _, s := range spec.Command {
		argv = append(argv, expand(s, envMap))
	}
	imageID := "host"
	if entry != "" {
		imageID = "lifeboat-image-map://" + entry
		if len(argv) == 0 {
			argv = []string{entry}
		}
	} else if len(argv) == 0 {
		return startErr(fmt.Sprintf("image %q is not in the pod runner's image map (%s) and the container has no command: "+
			"there are no images, add a line 'IMAGE-PREFIX /path/to/binary' there or set command", spec.Image, *imagesFile))
	}
	for _, s := range spec.Args {
		argv = append(argv, expand(s, envMap))
	}
	bin, err := lookPath(argv[0], envMap["PATH"])
	if err != nil {
		return startErr(err.Error())
	}
	w.mu.Lock()
	c.imageID = imageID
	w.mu.Unlock()

	// Mounts: volumes, devices, the termination-message file.
	cdir := filepath.Join(ctrDir(w), spec.Name)
	if err := os.MkdirAll(cdir, 0o755); err != nil {
		return startErr(err.Error())
	}
	var mounts []mountSpec
	for _, vm := range spec.VolumeMounts {
		vi, ok := vols[vm.Name]
		if !ok {
			return startErr(fmt.Sprintf("volumeMount %s: no volume %q", vm.MountPath, vm.Name))
		}
		if vi.block {
			return startErr(fmt.Sprintf("volumeMount %s: volume %q is a Block volume (use volumeDevices)", vm.MountPath, vm.Name))
		}
		src := vi.path
		sub := vm.SubPath
		if vm.SubPathExpr != "" {
			sub = expand(vm.SubPathExpr, envMap)
		}
		if sub != "" {
			src = filepath.Join(vi.path, filepath.Clean("/"+sub))
			if _, err := os.Stat(src); os.IsNotExist(err) {
				if err := os.MkdirAll(src, 0o755); err != nil {
					return startErr(fmt.Sprintf("subPath %s: %v", sub, err))
				}
			}
		}
		mounts = append(mounts, mountSpec{Source: src, Target: vm.MountPath, ReadOnly: vm.ReadOnly})
	}
	for _, vd := range spec.VolumeDevices {
		vi, ok := vols[vd.Name]
		if !ok || !vi.block {
			return startErr(fmt.Sprintf("volumeDevice %s: volume %q is not a Block volume", vd.DevicePath, vd.Name))
		}
		mounts = append(mounts, mountSpec{Source: vi.path, Target: vd.DevicePath})
	}
	tpath := spec.TerminationMessagePath
	if tpath == "" {
		tpath = v1.TerminationMessagePathDefault
	}
	tfile := filepath.Join(cdir, fmt.Sprintf("%d-termination-log", n))
	if err := os.WriteFile(tfile, nil, 0o666); err != nil {
		return startErr(err.Error())
	}
	os.Chmod(tfile, 0o666)
	mounts = append(mounts, mountSpec{Source: tfile, Target: tpath})

	logPath := w.logFile(spec.Name, n)
	if err := os.MkdirAll(filepath.Dir(logPath), 0o755); err != nil {
		return startErr(err.Error())
	}
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC|os.O_APPEND, 0o644)
	if err != nil {
		return startErr(err.Error())
	}
	defer logf.Close()
	is := initSpec{Path: bin, Argv: argv, Env: env, Mounts: mounts, WorkingDir: spec.WorkingDir}
	specFile := filepath.Join(cdir, fmt.Sprintf("%d.json", n))
	b, _ := json.MarshalIndent(is, "", "  ")
	if err := os.WriteFile(specFile, b, 0o600); err != nil {
		return startErr(err.Error())
	}
	if ctx.Err() != nil {
		return 0, false, false
	}

	// The helper (this binary, in a mount namespace of its own) mounts and
	// execs; it reports a failure before exec on fd 3 (closed by the exec).
	pr, pw, err := os.Pipe()
	if err != nil {
		return startErr(err.Error())
	}
	cmd := exec.Command(w.r.self, containerInitArg, specFile)
	cmd.Env = []string{}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = []*os.File{pw}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Unshareflags: syscall.CLONE_NEWNS}
	started := time.Now()
	if err := cmd.Start(); err != nil {
		pr.Close()
		pw.Close()
		return startErr(fmt.Sprintf("starting the container helper: %v", err))
	}
	pw.Close()
	msg, _ := io.ReadAll(pr)
	pr.Close()
	pid := cmd.Process.Pid
	if len(msg) > 0 {
		cmd.Wait()
		return startErr(strings.TrimSpace(string(msg)))
	}
	pidFile := filepath.Join(ctrDir(w), spec.Name+".pid")
	os.WriteFile(pidFile, []byte(fmt.Sprintf("%d %s\n", pid, procStart(pid))), 0o644)
	w.mu.Lock()
	c.state = v1.ContainerState{Running: &v1.ContainerStateRunning{StartedAt: metav1.NewTime(started)}}
	c.started = true
	c.ready = spec.ReadinessProbe == nil
	c.pid = pid
	c.env = env
	w.mu.Unlock()
	w.logf("container %s started (pid %d): %s", spec.Name, pid, strings.Join(argv, " "))
	w.pushStatus()

	exited := make(chan struct{})
	if spec.ReadinessProbe != nil {
		go w.probe(c, spec, pid, env, exited)
	}
	waitErr := make(chan error, 1)
	go func() { waitErr <- cmd.Wait() }()
	var werr error
	stopped := false
	select {
	case werr = <-waitErr:
	case <-ctx.Done():
		stopped = true
		w.mu.Lock()
		grace := w.grace
		w.mu.Unlock()
		syscall.Kill(-pid, syscall.SIGTERM)
		select {
		case werr = <-waitErr:
		case <-time.After(grace):
			w.logf("container %s ignored SIGTERM for %s: SIGKILL", spec.Name, grace)
			syscall.Kill(-pid, syscall.SIGKILL)
			werr = <-waitErr
		}
	}
	finished := time.Now()
	close(exited)
	// What the container left running in its group goes with it.
	syscall.Kill(-pid, syscall.SIGKILL)
	os.Remove(pidFile)
	code = 0
	if cmd.ProcessState != nil {
		ws := cmd.ProcessState.Sys().(syscall.WaitStatus)
		switch {
		case ws.Exited():
			code = int32(ws.ExitStatus())
		case ws.Signaled():
			code = 128 + int32(ws.Signal())
		}
	} else if werr != nil {
		code = 128
	}
	reason := "Completed"
	if code != 0 {
		reason = "Error"
	}
	message := terminationMessage(tfile, logPath, spec.TerminationMessagePolicy, code)
	w.logf("container %s exited %d (%s)", spec.Name, code, reason)
	w.terminate(c, code, reason, message, started, finished)
	return code, false, !stopped
}

// procStart: a process's start time (field 22 of /proc/PID/stat), to tell it
// from a later process with the same pid.
func procStart(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "0"
	}
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 {
		if f := strings.Fields(s[i+1:]); len(f) > 19 {
			return f[19]
		}
	}
	return "0"
}

// terminationMessage as kubelet: the file's last 4096 bytes; with
// FallbackToLogsOnError, a failed container and an empty file, the last 80
// lines of its log, at most their last 2048 bytes.
func terminationMessage(file, logPath string, policy v1.TerminationMessagePolicy, code int32) string {
	data, _ := readTail(file, 4096)
	if len(data) > 0 || policy != v1.TerminationMessageFallbackToLogsOnError || code == 0 {
		return string(data)
	}
	b, _ := os.ReadFile(logPath)
	b = tailLines(b, 80)
	if len(b) > 2048 {
		b = b[len(b)-2048:]
	}
	return string(b)
}

func readTail(path string, max int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	off := st.Size() - max
	if off < 0 {
		off = 0
	}
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		return nil, err
	}
	return io.ReadAll(f)
}

// tailLines: the last n lines of b (a final line without newline counts).
func tailLines(b []byte, n int) []byte {
	if n < 0 {
		return b
	}
	end := len(b)
	if end > 0 && b[end-1] == '\n' {
		end--
	}
	count := 0
	for i := end - 1; i >= 0; i-- {
		if b[i] == '\n' {
			count++
			if count == n {
				return b[i+1:]
			}
		}
	}
	if n == 0 {
		return nil
	}
	return b
}

// probe runs a readiness probe until the instance exits.
func (w *podWorker) probe(c *ctrState, spec v1.Container, pid int, env []string, exited <-chan struct{}) {
	p := spec.ReadinessProbe
	period := time.Duration(max(p.PeriodSeconds, 1)) * time.Second
	timeout := time.Duration(max(p.TimeoutSeconds, 1)) * time.Second
	succ, fail := int(max(p.SuccessThreshold, 1)), int(max(p.FailureThreshold, 1))
	select {
	case <-exited:
		return
	case <-time.After(time.Duration(p.InitialDelaySeconds) * time.Second):
	}
	okRun, badRun := 0, 0
	for {
		err := runProbe(p, spec, pid, env, timeout)
		w.mu.Lock()
		changed := false
		if err == nil {
			okRun, badRun = okRun+1, 0
			if okRun >= succ && !c.ready && c.pid == pid {
				c.ready, changed = true, true
			}
		} else {
			okRun, badRun = 0, badRun+1
			if badRun >= fail && c.ready && c.pid == pid {
				c.ready, changed = false, true
			}
		}
		w.mu.Unlock()
		if changed {
			w.logf("container %s ready=%v (readiness probe: %v)", spec.Name, err == nil, err)
			w.pushStatus()
		}
		select {
		case <-exited:
			return
		case <-time.After(period):
		}
	}
}

func probePort(p intstr.IntOrString, spec v1.Container) (int, error) {
	if p.Type == intstr.Int {
		return p.IntValue(), nil
	}
	for _, cp := range spec.Ports {
		if cp.Name == p.StrVal {
			return int(cp.ContainerPort), nil
		}
	}
	return 0, fmt.Errorf("no container port named %q", p.StrVal)
}

func runProbe(p *v1.Probe, spec v1.Container, pid int, env []string, timeout time.Duration) error {
	switch {
	case p.Exec != nil:
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		// In the container's mount namespace, with its environment.
		cmd := exec.CommandContext(ctx, "nsenter", append([]string{"--target", strconv.Itoa(pid), "--mount", "--"}, p.Exec.Command...)...)
		cmd.Env = env
		cmd.Dir = "/"
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("%v: %s", err, strings.TrimSpace(string(out)))
		}
		return nil
	case p.TCPSocket != nil:
		port, err := probePort(p.TCPSocket.Port, spec)
		if err != nil {
			return err
		}
		conn, err := net.DialTimeout("tcp", net.JoinHostPort(nodeIP, strconv.Itoa(port)), timeout)
		if err != nil {
			return err
		}
		return conn.Close()
	case p.HTTPGet != nil:
		port, err := probePort(p.HTTPGet.Port, spec)
		if err != nil {
			return err
		}
		scheme := strings.ToLower(string(p.HTTPGet.Scheme))
		if scheme == "" {
			scheme = "http"
		}
		host := p.HTTPGet.Host
		if host == "" {
			host = nodeIP
		}
		req, err := http.NewRequest("GET", fmt.Sprintf("%s://%s%s", scheme, net.JoinHostPort(host, strconv.Itoa(port)), p.HTTPGet.Path), nil)
		if err != nil {
			return err
		}
		for _, h := range p.HTTPGet.HTTPHeaders {
			req.Header.Add(h.Name, h.Value)
		}
		cl := &http.Client{Timeout: timeout, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
		resp, err := cl.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode < 200 || resp.StatusCode >= 400 {
			return fmt.Errorf("HTTP probe failed with statuscode: %d", resp.StatusCode)
		}
		return nil
	}
	return nil // gRPC probes are not run: they count as passing
}
