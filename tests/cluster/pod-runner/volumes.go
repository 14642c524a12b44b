package main

import (
	"context"
	"fmt"
	"math"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	authv1 "k8s.io/api/authentication/v1"
	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// volInfo is a pod volume set up on the host.
type volInfo struct {
	path  string // directory (or file) to bind-mount; the device file for Block
	block bool
	// CSI: published by NodePublishVolume at path.
	csiVolumeID string
}

type csiClient struct {
	node csi.NodeClient
}

func newCSIClient(endpoint string) (*csiClient, error) {
	sock := strings.TrimPrefix(endpoint, "unix://")
	conn, err := grpc.NewClient("passthrough:///csi", grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		}))
	if err != nil {
		return nil, err
	}
	return &csiClient{node: csi.NewNodeClient(conn)}, nil
}

func accessMode(modes []v1.PersistentVolumeAccessMode) csi.VolumeCapability_AccessMode_Mode {
	for _, m := range modes {
		switch m {
		case v1.ReadWriteMany:
			return csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER
		case v1.ReadOnlyMany:
			return csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY
		case v1.ReadWriteOncePod:
			return csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER
		}
	}
	return csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER
}

// setupVolumes sets up every volume of the pod not set up yet.
func (w *podWorker) setupVolumes(ctx context.Context) error {
	w.mu.Lock()
	pod := w.pod.DeepCopy()
	w.mu.Unlock()
	for _, vol := range pod.Spec.Volumes {
		w.mu.Lock()
		_, done := w.vols[vol.Name]
		w.mu.Unlock()
		if done {
			continue
		}
		vi, err := w.setupVolume(ctx, pod, vol)
		if err != nil {
			return fmt.Errorf("volume %q: %w", vol.Name, err)
		}
		w.mu.Lock()
		w.vols[vol.Name] = vi
		w.mu.Unlock()
	}
	return nil
}

func (w *podWorker) volDir(plugin, name string) (string, error) {
	d := filepath.Join(w.dir, "volumes", plugin, name)
	os.RemoveAll(d)
	return d, os.MkdirAll(d, 0o755)
}

func mode(m *int32, def int32) os.FileMode {
	if m != nil {
		return os.FileMode(*m)
	}
	return os.FileMode(def)
}

func writeFile(dir, rel string, data []byte, m os.FileMode) error {
	p := filepath.Join(dir, filepath.Clean("/"+rel))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(p, data, m); err != nil {
		return err
	}
	return os.Chmod(p, m)
}

// project writes data's keys (or only items) into dir.
func project(dir string, data map[string][]byte, items []v1.KeyToPath, def os.FileMode, what string, optional bool) error {
	if len(items) == 0 {
		for k, v := range data {
			if err := writeFile(dir, k, v, def); err != nil {
				return err
			}
		}
		return nil
	}
	for _, it := range items {
		v, ok := data[it.Key]
		if !ok {
			if optional {
				continue
			}
			return fmt.Errorf("%s has no key %q", what, it.Key)
		}
		m := def
		if it.Mode != nil {
			m = os.FileMode(*it.Mode)
		}
		if err := writeFile(dir, it.Path, v, m); err != nil {
			return err
		}
	}
	return nil
}

func (w *podWorker) secretData(ctx context.Context, name string, optional bool) (map[string][]byte, bool, error) {
	s, err := w.r.cs.CoreV1().Secrets(w.ns).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		if optional {
			return nil, false, nil
		}
		return nil, false, fmt.Errorf("secret %q not found", name)
	}
	if err != nil {
		return nil, false, err
	}
	return s.Data, true, nil
}

func (w *podWorker) configMapData(ctx context.Context, name string, optional bool) (map[string][]byte, bool, error) {
	c, err := w.r.cs.CoreV1().ConfigMaps(w.ns).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		if optional {
			return nil, false, nil
		}
		return nil, false, fmt.Errorf("configmap %q not found", name)
	}
	if err != nil {
		return nil, false, err
	}
	data := map[string][]byte{}
	for k, v := range c.Data {
		data[k] = []byte(v)
	}
	for k, v := range c.BinaryData {
		data[k] = v
	}
	return data, true, nil
}

func (w *podWorker) downward(dir string, pod *v1.Pod, items []v1.DownwardAPIVolumeFile, def os.FileMode) error {
	for _, it := range items {
		var val string
		var err error
		switch {
		case it.FieldRef != nil:
			val, err = fieldValue(pod, it.FieldRef.FieldPath)
		case it.ResourceFieldRef != nil:
			val, err = resourceValue(pod, it.ResourceFieldRef)
		}
		if err != nil {
			return err
		}
		m := def
		if it.Mode != nil {
			m = os.FileMode(*it.Mode)
		}
		if err := writeFile(dir, it.Path, []byte(val), m); err != nil {
			return err
		}
	}
	return nil
}

// token asks the TokenRequest API for a token of the pod's service account, bound to the pod.
func (w *podWorker) token(ctx context.Context, pod *v1.Pod, src *v1.ServiceAccountTokenProjection) ([]byte, error) {
	exp := int64(3600)
	if src.ExpirationSeconds != nil {
		exp = *src.ExpirationSeconds
	}
	var aud []string
	if src.Audience != "" {
		aud = []string{src.Audience}
	}
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	tr, err := w.r.cs.CoreV1().ServiceAccounts(w.ns).CreateToken(ctx, sa, &authv1.TokenRequest{Spec: authv1.TokenRequestSpec{
		Audiences: aud, ExpirationSeconds: &exp,
		BoundObjectRef: &authv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID}}}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("token for service account %q: %w", sa, err)
	}
	return []byte(tr.Status.Token), nil
}

func (w *podWorker) setupVolume(ctx context.Context, pod *v1.Pod, vol v1.Volume) (*volInfo, error) {
	switch {
	case vol.EmptyDir != nil:
		d, err := w.volDir("kubernetes.io~empty-dir", vol.Name)
		if err == nil {
			err = os.Chmod(d, 0o777)
		}
		return &volInfo{path: d}, err
	case vol.HostPath != nil:
		p := vol.HostPath.Path
		t := v1.HostPathUnset
		if vol.HostPath.Type != nil {
			t = *vol.HostPath.Type
		}
		st, err := os.Stat(p)
		switch t {
		case v1.HostPathDirectoryOrCreate:
			if err != nil {
				if err := os.MkdirAll(p, 0o755); err != nil {
					return nil, err
				}
			}
		case v1.HostPathFileOrCreate:
			if err != nil {
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					return nil, err
				}
				f, err := os.OpenFile(p, os.O_CREATE|os.O_RDONLY, 0o644)
				if err != nil {
					return nil, err
				}
				f.Close()
			}
		case v1.HostPathDirectory:
			if err != nil || !st.IsDir() {
				return nil, fmt.Errorf("hostPath %s is not a directory", p)
			}
		case v1.HostPathFile:
			if err != nil || !st.Mode().IsRegular() {
				return nil, fmt.Errorf("hostPath %s is not a file", p)
			}
		case v1.HostPathUnset:
		default:
			if err != nil {
				return nil, fmt.Errorf("hostPath %s: %v", p, err)
			}
		}
		return &volInfo{path: p}, nil
	case vol.Secret != nil:
		d, err := w.volDir("kubernetes.io~secret", vol.Name)
		if err != nil {
			return nil, err
		}
		optional := vol.Secret.Optional != nil && *vol.Secret.Optional
		data, _, err := w.secretData(ctx, vol.Secret.SecretName, optional)
		if err == nil {
			err = project(d, data, vol.Secret.Items, mode(vol.Secret.DefaultMode, 0o644), "secret "+vol.Secret.SecretName, optional)
		}
		return &volInfo{path: d}, err
	case vol.ConfigMap != nil:
		d, err := w.volDir("kubernetes.io~configmap", vol.Name)
		if err != nil {
			return nil, err
		}
		optional := vol.ConfigMap.Optional != nil && *vol.ConfigMap.Optional
		data, _, err := w.configMapData(ctx, vol.ConfigMap.Name, optional)
		if err == nil {
			err = project(d, data, vol.ConfigMap.Items, mode(vol.ConfigMap.DefaultMode, 0o644), "configmap "+vol.ConfigMap.Name, optional)
		}
		return &volInfo{path: d}, err
	case vol.DownwardAPI != nil:
		d, err := w.volDir("kubernetes.io~downward-api", vol.Name)
		if err == nil {
			err = w.downward(d, pod, vol.DownwardAPI.Items, mode(vol.DownwardAPI.DefaultMode, 0o644))
		}
		return &volInfo{path: d}, err
	case vol.Projected != nil:
		d, err := w.volDir("kubernetes.io~projected", vol.Name)
		if err != nil {
			return nil, err
		}
		def := mode(vol.Projected.DefaultMode, 0o644)
		for _, src := range vol.Projected.Sources {
			switch {
			case src.Secret != nil:
				optional := src.Secret.Optional != nil && *src.Secret.Optional
				data, _, err := w.secretData(ctx, src.Secret.Name, optional)
				if err == nil {
					err = project(d, data, src.Secret.Items, def, "secret "+src.Secret.Name, optional)
				}
				if err != nil {
					return nil, err
				}
			case src.ConfigMap != nil:
				optional := src.ConfigMap.Optional != nil && *src.ConfigMap.Optional
				data, _, err := w.configMapData(ctx, src.ConfigMap.Name, optional)
				if err == nil {
					err = project(d, data, src.ConfigMap.Items, def, "configmap "+src.ConfigMap.Name, optional)
				}
				if err != nil {
					return nil, err
				}
			case src.DownwardAPI != nil:
				if err := w.downward(d, pod, src.DownwardAPI.Items, def); err != nil {
					return nil, err
				}
			case src.ServiceAccountToken != nil:
				tok, err := w.token(ctx, pod, src.ServiceAccountToken)
				if err == nil {
					m := def
					if vol.Projected.DefaultMode == nil {
						m = 0o600
					}
					err = writeFile(d, src.ServiceAccountToken.Path, tok, m)
				}
				if err != nil {
					return nil, err
				}
			default:
				return nil, fmt.Errorf("projected source not supported by the pod runner")
			}
		}
		return &volInfo{path: d}, nil
	case vol.PersistentVolumeClaim != nil:
		return w.setupClaim(ctx, vol.Name, vol.PersistentVolumeClaim)
	}
	return nil, fmt.Errorf("volume type not supported by the pod runner (emptyDir, hostPath, secret, configMap, downwardAPI, projected, persistentVolumeClaim are)")
}

func (w *podWorker) setupClaim(ctx context.Context, name string, src *v1.PersistentVolumeClaimVolumeSource) (*volInfo, error) {
	claim, err := w.r.cs.CoreV1().PersistentVolumeClaims(w.ns).Get(ctx, src.ClaimName, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("persistentvolumeclaim %q: %w", src.ClaimName, err)
	}
	if claim.Status.Phase != v1.ClaimBound || claim.Spec.VolumeName == "" {
		return nil, fmt.Errorf("persistentvolumeclaim %q is not bound yet (%s)", src.ClaimName, claim.Status.Phase)
	}
	pv, err := w.r.cs.CoreV1().PersistentVolumes().Get(ctx, claim.Spec.VolumeName, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("persistentvolume %q: %w", claim.Spec.VolumeName, err)
	}
	if pv.Spec.CSI == nil || pv.Spec.CSI.Driver != *csiDriver || w.r.csi == nil {
		return nil, fmt.Errorf("persistentvolume %q is not a volume of CSI driver %s (the only one the pod runner publishes)", pv.Name, *csiDriver)
	}
	block := claim.Spec.VolumeMode != nil && *claim.Spec.VolumeMode == v1.PersistentVolumeBlock
	capab := &csi.VolumeCapability{AccessMode: &csi.VolumeCapability_AccessMode{Mode: accessMode(pv.Spec.AccessModes)}}
	var target string
	if block {
		target = filepath.Join(w.dir, "volumeDevices", "kubernetes.io~csi", pv.Name)
		capab.AccessType = &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}}
	} else {
		target = filepath.Join(w.dir, "volumes", "kubernetes.io~csi", pv.Name, "mount")
		capab.AccessType = &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{
			FsType: pv.Spec.CSI.FSType, MountFlags: pv.Spec.MountOptions}}
	}
	if err := os.MkdirAll(filepath.Dir(target), 0o750); err != nil {
		return nil, err
	}
	vi := &volInfo{path: target, block: block, csiVolumeID: pv.Spec.CSI.VolumeHandle}
	// Recorded before the call: a failed publish is unpublished at teardown too.
	w.mu.Lock()
	w.vols[name+"\x00pending"] = vi
	w.mu.Unlock()
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	_, err = w.r.csi.node.NodePublishVolume(cctx, &csi.NodePublishVolumeRequest{
		VolumeId: pv.Spec.CSI.VolumeHandle, TargetPath: target, VolumeCapability: capab,
		Readonly:      src.ReadOnly || pv.Spec.CSI.ReadOnly,
		VolumeContext: pv.Spec.CSI.VolumeAttributes,
	})
	w.mu.Lock()
	delete(w.vols, name+"\x00pending")
	if err != nil {
		w.vols[name+"\x00failed"] = vi
	}
	w.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("NodePublishVolume %s: %w", pv.Spec.CSI.VolumeHandle, err)
	}
	w.logf("published %s (claim %s, block=%v) at %s", pv.Spec.CSI.VolumeHandle, claim.Name, block, target)
	return vi, nil
}

// teardownVolumes unpublishes the pod's CSI volumes (idempotent).
func (w *podWorker) teardownVolumes() {
	w.mu.Lock()
	vols := w.vols
	w.vols = map[string]*volInfo{}
	w.volumesReady = false
	w.mu.Unlock()
	for name, vi := range vols {
		if vi.csiVolumeID == "" {
			continue
		}
		var err error
		for i := 0; i < 10; i++ {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			_, err = w.r.csi.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: vi.csiVolumeID, TargetPath: vi.path})
			cancel()
			if err == nil {
				break
			}
			time.Sleep(time.Second)
		}
		if err != nil {
			w.logf("NodeUnpublishVolume %s (volume %s) at %s: %v", vi.csiVolumeID, strings.TrimSuffix(name, "\x00failed"), vi.path, err)
		} else {
			w.logf("unpublished %s from %s", vi.csiVolumeID, vi.path)
		}
	}
}

// anyMountUnder reports whether a mount point lies under dir (host namespace).
func anyMountUnder(dir string) bool {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return true
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 {
			mp := strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`).Replace(f[4])
			if mp == dir || strings.HasPrefix(mp, dir+"/") {
				return true
			}
		}
	}
	return false
}

// fieldValue: a downward API field of the pod.
func fieldValue(pod *v1.Pod, path string) (string, error) {
	fmtMap := func(m map[string]string) string {
		var lines []string
		for k, v := range m {
			lines = append(lines, fmt.Sprintf("%s=%q", k, v))
		}
		sortStrings(lines)
		return strings.Join(lines, "\n")
	}
	if k, ok := subscript(path, "metadata.labels"); ok {
		return pod.Labels[k], nil
	}
	if k, ok := subscript(path, "metadata.annotations"); ok {
		return pod.Annotations[k], nil
	}
	switch path {
	case "metadata.name":
		return pod.Name, nil
	case "metadata.namespace":
		return pod.Namespace, nil
	case "metadata.uid":
		return string(pod.UID), nil
	case "metadata.labels":
		return fmtMap(pod.Labels), nil
	case "metadata.annotations":
		return fmtMap(pod.Annotations), nil
	case "spec.nodeName":
		return pod.Spec.NodeName, nil
	case "spec.serviceAccountName":
		return pod.Spec.ServiceAccountName, nil
	case "status.podIP", "status.hostIP", "status.podIPs", "status.hostIPs":
		return nodeIP, nil
	}
	return "", fmt.Errorf("downward API field %q not supported by the pod runner", path)
}

func subscript(path, prefix string) (string, bool) {
	if strings.HasPrefix(path, prefix+"['") && strings.HasSuffix(path, "']") {
		return path[len(prefix)+2 : len(path)-2], true
	}
	return "", false
}

// resourceValue: a container's limit (else request, else the node's capacity) over the divisor, rounded up.
func resourceValue(pod *v1.Pod, ref *v1.ResourceFieldSelector) (string, error) {
	var c *v1.Container
	for i := range pod.Spec.Containers {
		if pod.Spec.Containers[i].Name == ref.ContainerName || (ref.ContainerName == "" && i == 0) {
			c = &pod.Spec.Containers[i]
		}
	}
	if c == nil {
		return "", fmt.Errorf("resourceFieldRef: no container %q", ref.ContainerName)
	}
	parts := strings.SplitN(ref.Resource, ".", 2)
	if len(parts) != 2 {
		return "", fmt.Errorf("resourceFieldRef %q not supported", ref.Resource)
	}
	list := c.Resources.Limits
	if parts[0] == "requests" {
		list = c.Resources.Requests
	}
	q, ok := list[v1.ResourceName(parts[1])]
	if !ok {
		q, ok = c.Resources.Limits[v1.ResourceName(parts[1])]
	}
	if !ok {
		switch parts[1] {
		case "cpu":
			q = *resource.NewQuantity(int64(numCPU()), resource.DecimalSI)
		case "memory":
			q = *resource.NewQuantity(memTotal(), resource.BinarySI)
		default:
			q = resource.MustParse("0")
		}
	}
	div := ref.Divisor
	if div.IsZero() {
		div = resource.MustParse("1")
	}
	if parts[1] == "cpu" {
		return fmt.Sprint(int64(math.Ceil(float64(q.MilliValue()) / float64(div.MilliValue())))), nil
	}
	return fmt.Sprint(int64(math.Ceil(float64(q.Value()) / float64(div.Value())))), nil
}
