package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// serveKubelet serves the part of the kubelet API the apiserver proxies for
// `kubectl logs`: GET /containerLogs/{namespace}/{pod}/{container}. exec,
// attach, port-forward and run are refused with a clear error.
func serveKubelet(r *runner) error {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") })
	mux.HandleFunc("/containerLogs/", r.containerLogs)
	for _, p := range []string{"/exec/", "/attach/", "/portForward/", "/run/", "/cri/"} {
		what := strings.Trim(p, "/")
		mux.HandleFunc(p, func(w http.ResponseWriter, _ *http.Request) {
			http.Error(w, fmt.Sprintf("%s is not supported by lifeboat's pod runner: containers are host processes, "+
				"there is no container runtime to %s into (see tests/cluster/README.md)", what, what), http.StatusNotImplemented)
		})
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, req *http.Request) {
		http.Error(w, fmt.Sprintf("%s: not served by lifeboat's pod runner (only /containerLogs and /healthz)", req.URL.Path), http.StatusNotFound)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	l, err := net.Listen("tcp", net.JoinHostPort(nodeIP, strconv.Itoa(*port)))
	if err != nil {
		return err
	}
	if *tlsCert == "" {
		go func() { log.Fatal(srv.Serve(l)) }()
		return nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if *clientCA != "" {
		pem, err := os.ReadFile(*clientCA)
		if err != nil {
			return err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("no certificate in %s", *clientCA)
		}
		cfg.ClientCAs, cfg.ClientAuth = pool, tls.RequireAndVerifyClientCert
	}
	srv.TLSConfig = cfg
	go func() { log.Fatal(srv.ServeTLS(l, *tlsCert, *tlsKey)) }()
	return nil
}

// instances: the numbers of a container's log files (one per instance), in order.
func instances(dir string) []int {
	entries, _ := os.ReadDir(dir)
	var ns []int
	for _, e := range entries {
		if n, err := strconv.Atoi(strings.TrimSuffix(e.Name(), ".log")); err == nil && strings.HasSuffix(e.Name(), ".log") {
			ns = append(ns, n)
		}
	}
	sort.Ints(ns)
	return ns
}

func (r *runner) containerLogs(w http.ResponseWriter, req *http.Request) {
	parts := strings.Split(strings.TrimPrefix(req.URL.Path, "/containerLogs/"), "/")
	if len(parts) != 3 || parts[0] == "" || parts[1] == "" || parts[2] == "" {
		http.Error(w, "expected /containerLogs/{namespace}/{pod}/{container}", http.StatusBadRequest)
		return
	}
	ns, name, ctr := parts[0], parts[1], parts[2]
	pod, err := r.pods.Pods(ns).Get(name)
	if err != nil {
		http.Error(w, fmt.Sprintf("pod %s/%s not found on node %s", ns, name, *nodeName), http.StatusNotFound)
		return
	}
	q := req.URL.Query()
	dir := filepath.Join(r.podDir, string(pod.UID), "logs", ctr)
	ns_ := instances(dir)
	idx := len(ns_) - 1
	if q.Get("previous") == "true" {
		idx--
	}
	if idx < 0 {
		what := "is waiting to start"
		if q.Get("previous") == "true" {
			what = "has no previous terminated instance"
		}
		http.Error(w, fmt.Sprintf("container %q in pod %q %s", ctr, name, what), http.StatusBadRequest)
		return
	}
	path := filepath.Join(dir, strconv.Itoa(ns_[idx])+".log")
	b, err := os.ReadFile(path)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	if t := q.Get("tailLines"); t != "" {
		if n, err := strconv.Atoi(t); err == nil {
			b = tailLines(b, n)
		}
	}
	if s := q.Get("sinceSeconds"); s != "" {
		// Not kept per line (no CRI log format): whole log.
		_ = s
	}
	limit := int64(-1)
	if l := q.Get("limitBytes"); l != "" {
		if n, err := strconv.ParseInt(l, 10, 64); err == nil && n >= 0 {
			limit = n
		}
	}
	w.Header().Set("Content-Type", "text/plain")
	written := int64(0)
	out := func(p []byte) bool {
		if limit >= 0 && written+int64(len(p)) > limit {
			p = p[:limit-written]
		}
		n, err := w.Write(p)
		written += int64(n)
		if f, ok := w.(http.Flusher); ok {
			f.Flush()
		}
		return err == nil && (limit < 0 || written < limit)
	}
	if !out(b) || q.Get("follow") != "true" || idx != len(ns_)-1 {
		return
	}
	// follow: more of the file while this instance runs.
	offset := int64(0)
	if st, err := os.Stat(path); err == nil {
		offset = st.Size()
	}
	pidFile := filepath.Join(r.podDir, string(pod.UID), "containers", ctr+".pid")
	for {
		select {
		case <-req.Context().Done():
			return
		case <-time.After(500 * time.Millisecond):
		}
		running := false
		if _, err := os.Stat(pidFile); err == nil && len(instances(dir)) == len(ns_) {
			running = true
		}
		f, err := os.Open(path)
		if err != nil {
			return
		}
		f.Seek(offset, io.SeekStart)
		more, _ := io.ReadAll(f)
		f.Close()
		offset += int64(len(more))
		if len(more) > 0 && !out(more) {
			return
		}
		if !running {
			return
		}
	}
}
