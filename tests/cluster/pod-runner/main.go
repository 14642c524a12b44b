// Command pod-runner is lifeboat's test-cluster node: a minimal kubelet with no
// container runtime. It binds unscheduled pods to its node (no scheduler
// runs), sets up their volumes (CSI NodePublishVolume over the plugin's unix
// socket, secrets, config maps, projected service-account tokens, ...), runs
// each container as a host process in a mount namespace of its own (volumes
// bind-mounted at their mount paths), reports pod and container status as a
// kubelet does, stops and deletes pods being deleted, and serves container
// logs to the apiserver. See tests/cluster/README.md for what it simulates.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"log"
	"os"
	"os/signal"
	"runtime"
	"sync"
	"syscall"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
)

var (
	kubeconfig    = flag.String("kubeconfig", "", "kubeconfig of the apiserver")
	nodeName      = flag.String("node", "lifeboat-node-0", "the node this runner is")
	dataDir       = flag.String("dir", "", "the cluster DIR: pods are kept in DIR/pods, images mapped by DIR/images")
	imagesFile    = flag.String("images", "", "image map (default DIR/images)")
	csiEndpoint   = flag.String("csi-endpoint", "", "unix socket of the CSI plugin")
	csiDriver     = flag.String("csi-driver", "hostpath.csi.k8s.io", "the CSI driver the socket serves")
	port          = flag.Int("port", 10250, "HTTPS port for the kubelet API (container logs)")
	tlsCert       = flag.String("tls-cert", "", "serving certificate of the kubelet API")
	tlsKey        = flag.String("tls-key", "", "its key")
	clientCA      = flag.String("client-ca", "", "CA of accepted client certificates (the apiserver's); empty accepts any client")
	apiserverPort = flag.String("apiserver-port", "", "KUBERNETES_SERVICE_PORT given to containers")
	k8sVersion    = flag.String("kubelet-version", "v1.37.2", "reported as the node's kubelet version")
)

const nodeIP = "127.0.0.1"

type runner struct {
	ctx    context.Context
	cs     kubernetes.Interface
	pods   corelisters.PodLister
	csi    *csiClient
	self   string // this executable, for the container-init helper
	podDir string

	mu       sync.Mutex
	workers  map[types.UID]*podWorker
	done     map[types.UID]bool // pods already stopped and deleted
	binding  map[types.UID]bool
	stopping bool
	wg       sync.WaitGroup
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == containerInitArg {
		containerInit(os.Args[2:])
		return
	}
	flag.Parse()
	if *kubeconfig == "" || *dataDir == "" {
		log.Fatal("-kubeconfig and -dir are required")
	}
	if *imagesFile == "" {
		*imagesFile = *dataDir + "/images"
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		log.Fatalf("kubeconfig: %v", err)
	}
	cfg.QPS, cfg.Burst = 50, 100
	cfg.UserAgent = "lifeboat-pod-runner"
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		log.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r := &runner{ctx: ctx, cs: cs, self: self, podDir: *dataDir + "/pods",
		workers: map[types.UID]*podWorker{}, done: map[types.UID]bool{}, binding: map[types.UID]bool{}}
	if err := os.MkdirAll(r.podDir, 0o755); err != nil {
		log.Fatal(err)
	}
	if *csiEndpoint != "" {
		if r.csi, err = newCSIClient(*csiEndpoint); err != nil {
			log.Fatal(err)
		}
	}
	if err := serveKubelet(r); err != nil {
		log.Fatalf("kubelet API: %v", err)
	}
	for {
		if err = r.registerNode(); err == nil {
			break
		}
		log.Printf("registering node %s: %v (retrying)", *nodeName, err)
		time.Sleep(2 * time.Second)
	}
	go r.heartbeat()

	factory := informers.NewSharedInformerFactory(cs, 0)
	inf := factory.Core().V1().Pods()
	r.pods = inf.Lister()
	inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    r.onPod,
		UpdateFunc: func(_, n any) { r.onPod(n) },
		DeleteFunc: func(o any) {
			if t, ok := o.(cache.DeletedFinalStateUnknown); ok {
				o = t.Obj
			}
			if p, ok := o.(*v1.Pod); ok {
				r.mu.Lock()
				w := r.workers[p.UID]
				r.mu.Unlock()
				if w != nil {
					w.wakeUp()
				}
			}
		},
	})
	factory.Start(ctx.Done())
	factory.WaitForCacheSync(ctx.Done())
	log.Printf("pod-runner for node %s: pods in %s, kubelet API on %s:%d", *nodeName, r.podDir, nodeIP, *port)

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	log.Printf("stopping: stopping every container and unpublishing every volume (the pods stay in the API)")
	r.mu.Lock()
	r.stopping = true
	ws := make([]*podWorker, 0, len(r.workers))
	for _, w := range r.workers {
		ws = append(ws, w)
	}
	r.mu.Unlock()
	for _, w := range ws {
		w.wakeUp()
	}
	waited := make(chan struct{})
	go func() { r.wg.Wait(); close(waited) }()
	select {
	case <-waited:
	case <-time.After(15 * time.Second):
		log.Printf("some pods did not stop within 15s")
	}
	log.Printf("stopped")
}

// onPod: bind an unscheduled pod to this node; hand a pod of this node to its worker.
func (r *runner) onPod(o any) {
	p, ok := o.(*v1.Pod)
	if !ok {
		return
	}
	if p.Spec.NodeName == "" {
		if (p.Spec.SchedulerName == "" || p.Spec.SchedulerName == v1.DefaultSchedulerName) && p.DeletionTimestamp == nil {
			r.bind(p)
		}
		return
	}
	if p.Spec.NodeName != *nodeName {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stopping || r.done[p.UID] {
		return
	}
	w := r.workers[p.UID]
	if w == nil {
		w = newPodWorker(r, p)
		r.workers[p.UID] = w
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			w.loop()
			r.mu.Lock()
			delete(r.workers, p.UID)
			r.mu.Unlock()
		}()
	}
	w.wakeUp()
}

// bind binds p to this node with a Binding, as the scheduler does (retrying).
func (r *runner) bind(p *v1.Pod) {
	r.mu.Lock()
	if r.binding[p.UID] {
		r.mu.Unlock()
		return
	}
	r.binding[p.UID] = true
	r.mu.Unlock()
	go func() {
		defer func() { r.mu.Lock(); delete(r.binding, p.UID); r.mu.Unlock() }()
		b := &v1.Binding{ObjectMeta: metav1.ObjectMeta{Name: p.Name, Namespace: p.Namespace, UID: p.UID},
			Target: v1.ObjectReference{Kind: "Node", Name: *nodeName}}
		for i := 0; i < 30; i++ {
			err := r.cs.CoreV1().Pods(p.Namespace).Bind(r.ctx, b, metav1.CreateOptions{})
			if err == nil {
				log.Printf("bound pod %s/%s to %s", p.Namespace, p.Name, *nodeName)
				return
			}
			if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
				return
			}
			log.Printf("binding pod %s/%s: %v", p.Namespace, p.Name, err)
			time.Sleep(time.Second)
		}
	}()
}

func (r *runner) finished(uid types.UID) {
	r.mu.Lock()
	r.done[uid] = true
	r.mu.Unlock()
}

func (r *runner) isStopping() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.stopping
}

func memTotal() int64 {
	var si syscall.Sysinfo_t
	if syscall.Sysinfo(&si) == nil {
		return int64(si.Totalram) * int64(si.Unit)
	}
	return 8 << 30
}

func kernelRelease() string {
	b, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	return string(trimNL(b))
}

func trimNL(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}

func (r *runner) nodeConditions() []v1.NodeCondition {
	now := metav1.Now()
	c := func(t v1.NodeConditionType, s v1.ConditionStatus, reason, msg string) v1.NodeCondition {
		return v1.NodeCondition{Type: t, Status: s, Reason: reason, Message: msg, LastHeartbeatTime: now, LastTransitionTime: now}
	}
	return []v1.NodeCondition{
		c(v1.NodeMemoryPressure, v1.ConditionFalse, "KubeletHasSufficientMemory", "not measured (lifeboat pod-runner)"),
		c(v1.NodeDiskPressure, v1.ConditionFalse, "KubeletHasNoDiskPressure", "not measured (lifeboat pod-runner)"),
		c(v1.NodePIDPressure, v1.ConditionFalse, "KubeletHasSufficientPID", "not measured (lifeboat pod-runner)"),
		c(v1.NodeReady, v1.ConditionTrue, "KubeletReady", "lifeboat pod-runner is posting ready status"),
	}
}

// registerNode creates the Node if missing and sets its status: Ready, the
// InternalIP 127.0.0.1 and the kubelet port the apiserver reaches for logs.
func (r *runner) registerNode() error {
	nodes := r.cs.CoreV1().Nodes()
	if _, err := nodes.Get(r.ctx, *nodeName, metav1.GetOptions{}); apierrors.IsNotFound(err) {
		n := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: *nodeName, Labels: map[string]string{
			"kubernetes.io/hostname": *nodeName, "kubernetes.io/os": "linux", "kubernetes.io/arch": runtime.GOARCH}}}
		if _, err := nodes.Create(r.ctx, n, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return err
		}
	} else if err != nil {
		return err
	}
	res := v1.ResourceList{
		v1.ResourceCPU:              *resource.NewQuantity(int64(runtime.NumCPU()), resource.DecimalSI),
		v1.ResourceMemory:           *resource.NewQuantity(memTotal(), resource.BinarySI),
		v1.ResourcePods:             resource.MustParse("110"),
		v1.ResourceEphemeralStorage: resource.MustParse("100Gi"),
	}
	st := v1.NodeStatus{
		Capacity: res, Allocatable: res,
		Conditions: r.nodeConditions(),
		Addresses: []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: nodeIP},
			{Type: v1.NodeHostName, Address: *nodeName}},
		DaemonEndpoints: v1.NodeDaemonEndpoints{KubeletEndpoint: v1.DaemonEndpoint{Port: int32(*port)}},
		NodeInfo: v1.NodeSystemInfo{KubeletVersion: *k8sVersion, OperatingSystem: "linux", Architecture: runtime.GOARCH,
			ContainerRuntimeVersion: "lifeboat-pod-runner://" + *k8sVersion, KernelVersion: kernelRelease(),
			OSImage: "host processes (lifeboat pod-runner)"},
	}
	patch, _ := json.Marshal(map[string]any{"status": st})
	_, err := nodes.Patch(r.ctx, *nodeName, types.MergePatchType, patch, metav1.PatchOptions{}, "status")
	return err
}

// heartbeat renews the node's conditions (nothing watches them: no node
// lifecycle controller runs, but `kubectl get nodes` shows them fresh).
func (r *runner) heartbeat() {
	t := time.NewTicker(40 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-r.ctx.Done():
			return
		case <-t.C:
			patch, _ := json.Marshal(map[string]any{"status": map[string]any{"conditions": r.nodeConditions()}})
			if _, err := r.cs.CoreV1().Nodes().Patch(r.ctx, *nodeName, types.StrategicMergePatchType, patch, metav1.PatchOptions{}, "status"); err != nil {
				log.Printf("node heartbeat: %v", err)
			}
		}
	}
}
