package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
)

// containerInitArg: `pod-runner container-init SPEC.json` is the helper that
// becomes a container: started by the runner in a new mount namespace (Go's
// fork unshares CLONE_NEWNS), it bind-mounts the container's volumes, changes
// to its working directory and execs its command with its environment.
const containerInitArg = "container-init"

type mountSpec struct {
	Source   string `json:"source"`
	Target   string `json:"target"`
	ReadOnly bool   `json:"readOnly,omitempty"`
}

type initSpec struct {
	Path       string      `json:"path"`
	Argv       []string    `json:"argv"`
	Env        []string    `json:"env"`
	Mounts     []mountSpec `json:"mounts"`
	WorkingDir string      `json:"workingDir,omitempty"`
}

// placeholder makes target exist on the host as a mount point of source's
// kind (an empty directory or file), creating its parents.
func placeholder(source, target string) error {
	st, err := os.Stat(source)
	if err != nil {
		return err
	}
	if tst, err := os.Stat(target); err == nil {
		if tst.IsDir() != st.IsDir() {
			return fmt.Errorf("%s exists on the host and is not a %s like %s", target, kind(st), source)
		}
		return nil
	}
	if st.IsDir() {
		return os.MkdirAll(target, 0o755)
	}
	if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(target, os.O_CREATE|os.O_RDONLY, 0o644)
	if err != nil {
		return err
	}
	return f.Close()
}

func kind(st os.FileInfo) string {
	if st.IsDir() {
		return "directory"
	}
	return "file"
}

func containerInit(args []string) {
	errPipe := os.NewFile(3, "error-pipe")
	syscall.CloseOnExec(3)
	fail := func(format string, a ...any) {
		fmt.Fprintf(errPipe, format, a...)
		os.Exit(128)
	}
	if len(args) != 1 {
		fail("usage: pod-runner %s SPEC.json", containerInitArg)
	}
	b, err := os.ReadFile(args[0])
	if err != nil {
		fail("reading the container spec: %v", err)
	}
	var s initSpec
	if err := json.Unmarshal(b, &s); err != nil {
		fail("reading the container spec: %v", err)
	}
	// Nothing mounted here reaches the host (Go's fork made / private already).
	if err := syscall.Mount("", "/", "", syscall.MS_REC|syscall.MS_PRIVATE, ""); err != nil {
		fail("making / private: %v", err)
	}
	// Parents before children.
	sort.SliceStable(s.Mounts, func(i, j int) bool {
		return strings.Count(filepath.Clean(s.Mounts[i].Target), "/") < strings.Count(filepath.Clean(s.Mounts[j].Target), "/")
	})
	for _, m := range s.Mounts {
		if err := placeholder(m.Source, m.Target); err != nil {
			fail("mount point %s: %v", m.Target, err)
		}
		if err := syscall.Mount(m.Source, m.Target, "", syscall.MS_BIND|syscall.MS_REC, ""); err != nil {
			fail("bind-mounting %s at %s: %v", m.Source, m.Target, err)
		}
		if m.ReadOnly {
			if err := syscall.Mount("", m.Target, "", syscall.MS_BIND|syscall.MS_REMOUNT|syscall.MS_RDONLY, ""); err != nil {
				fail("making %s read-only: %v", m.Target, err)
			}
		}
	}
	if s.WorkingDir != "" {
		if err := os.MkdirAll(s.WorkingDir, 0o755); err != nil {
			fail("working directory %s: %v", s.WorkingDir, err)
		}
		if err := os.Chdir(s.WorkingDir); err != nil {
			fail("working directory %s: %v", s.WorkingDir, err)
		}
	} else if err := os.Chdir("/"); err != nil {
		fail("chdir /: %v", err)
	}
	err = syscall.Exec(s.Path, s.Argv, s.Env)
	fail("exec %s: %v", s.Path, err)
}
