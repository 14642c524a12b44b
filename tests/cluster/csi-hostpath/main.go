// Command csi-hostpath is a small CSI plugin for lifeboat's test cluster: the
// upstream csi-driver-host-path is not served by the Go module proxy, so this
// stands in for its controller side. It serves, on a unix socket, the CSI
// Identity, Controller (create/delete volume from nothing, from a snapshot or
// from a volume; create/delete/list snapshots; expand), GroupController
// (volume group snapshots) and SnapshotMetadata (allocated and changed blocks)
// services. A volume is a sparse file of its capacity under -datadir, a
// snapshot a copy of it; metadata is kept in JSON files beside them, so the
// plugin can be restarted. The Node service publishes a volume for the pod
// runner (tests/cluster/pod-runner): the file is attached to a loop device,
// which is bind-mounted at the target (Block) or formatted (ext4, on first use)
// and mounted there (Mount); which loop device serves which target is kept in
// JSON files too (publications/), so an unpublish after a restart finds it.
package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
)

const blockSize = 1 << 20 // the granularity of snapshot metadata

var (
	endpoint   = flag.String("endpoint", "", "unix socket path to serve CSI on")
	dataDir    = flag.String("datadir", "", "directory for volume and snapshot files")
	driverName = flag.String("drivername", "hostpath.csi.k8s.io", "CSI driver name")
	nodeID     = flag.String("nodeid", "lifeboat-node-0", "node id reported by NodeGetInfo")
	version    = "lifeboat-test"
)

type volume struct {
	ID       string `json:"id"`
	Name     string `json:"name"`
	Capacity int64  `json:"capacity"`
	Block    bool   `json:"block"`
	// Source is "snapshot:ID" or "volume:ID" when created from one.
	Source string `json:"source,omitempty"`
}

type snapshot struct {
	ID       string    `json:"id"`
	Name     string    `json:"name"`
	VolumeID string    `json:"volumeId"`
	Size     int64     `json:"size"`
	Created  time.Time `json:"created"`
	GroupID  string    `json:"groupId,omitempty"`
}

type group struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	Snapshots []string  `json:"snapshots"`
	Created   time.Time `json:"created"`
}

type driver struct {
	csi.UnimplementedIdentityServer
	csi.UnimplementedControllerServer
	csi.UnimplementedGroupControllerServer
	csi.UnimplementedSnapshotMetadataServer
	csi.UnimplementedNodeServer
	mu  sync.Mutex
	dir string
}

func idFor(prefix, name string) string {
	sum := sha256.Sum256([]byte(name))
	return prefix + "-" + hex.EncodeToString(sum[:8])
}

func (d *driver) path(kind, id, ext string) string {
	return filepath.Join(d.dir, kind, id+ext)
}

func (d *driver) load(kind, id string, v any) error {
	b, err := os.ReadFile(d.path(kind, id, ".json"))
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

func (d *driver) store(kind, id string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	tmp := d.path(kind, id, ".json.tmp")
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, d.path(kind, id, ".json"))
}

func (d *driver) list(kind string) []string {
	entries, _ := os.ReadDir(filepath.Join(d.dir, kind))
	var ids []string
	for _, e := range entries {
		if n := e.Name(); strings.HasSuffix(n, ".json") {
			ids = append(ids, strings.TrimSuffix(n, ".json"))
		}
	}
	sort.Strings(ids)
	return ids
}

// copySparse copies src to dst, leaving all-zero blocks as holes.
func copySparse(src, dst string, size int64) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	buf := make([]byte, blockSize)
	zero := make([]byte, blockSize)
	var off int64
	for {
		n, err := in.ReadAt(buf, off)
		if n > 0 && !bytes.Equal(buf[:n], zero[:n]) {
			if _, werr := out.WriteAt(buf[:n], off); werr != nil {
				out.Close()
				return werr
			}
		}
		off += int64(n)
		if err == io.EOF || n == 0 {
			break
		}
		if err != nil {
			out.Close()
			return err
		}
	}
	if err := out.Truncate(size); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// Identity

func (d *driver) GetPluginInfo(context.Context, *csi.GetPluginInfoRequest) (*csi.GetPluginInfoResponse, error) {
	return &csi.GetPluginInfoResponse{Name: *driverName, VendorVersion: version}, nil
}

func (d *driver) GetPluginCapabilities(context.Context, *csi.GetPluginCapabilitiesRequest) (*csi.GetPluginCapabilitiesResponse, error) {
	var caps []*csi.PluginCapability
	for _, t := range []csi.PluginCapability_Service_Type{
		csi.PluginCapability_Service_CONTROLLER_SERVICE,
		csi.PluginCapability_Service_GROUP_CONTROLLER_SERVICE,
		csi.PluginCapability_Service_SNAPSHOT_METADATA_SERVICE,
	} {
		caps = append(caps, &csi.PluginCapability{Type: &csi.PluginCapability_Service_{
			Service: &csi.PluginCapability_Service{Type: t}}})
	}
	caps = append(caps, &csi.PluginCapability{Type: &csi.PluginCapability_VolumeExpansion_{
		VolumeExpansion: &csi.PluginCapability_VolumeExpansion{Type: csi.PluginCapability_VolumeExpansion_OFFLINE}}})
	return &csi.GetPluginCapabilitiesResponse{Capabilities: caps}, nil
}

func (d *driver) Probe(context.Context, *csi.ProbeRequest) (*csi.ProbeResponse, error) {
	return &csi.ProbeResponse{}, nil
}

// Controller

func (d *driver) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	var caps []*csi.ControllerServiceCapability
	for _, t := range []csi.ControllerServiceCapability_RPC_Type{
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT,
		csi.ControllerServiceCapability_RPC_LIST_SNAPSHOTS,
		csi.ControllerServiceCapability_RPC_CLONE_VOLUME,
		csi.ControllerServiceCapability_RPC_EXPAND_VOLUME,
		csi.ControllerServiceCapability_RPC_GET_SNAPSHOT,
	} {
		caps = append(caps, &csi.ControllerServiceCapability{Type: &csi.ControllerServiceCapability_Rpc{
			Rpc: &csi.ControllerServiceCapability_RPC{Type: t}}})
	}
	return &csi.ControllerGetCapabilitiesResponse{Capabilities: caps}, nil
}

func (d *driver) CreateVolume(_ context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	if req.GetName() == "" {
		return nil, status.Error(codes.InvalidArgument, "name missing")
	}
	if len(req.GetVolumeCapabilities()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "volume capabilities missing")
	}
	block := false
	for _, c := range req.GetVolumeCapabilities() {
		if c.GetBlock() != nil {
			block = true
		}
	}
	size := req.GetCapacityRange().GetRequiredBytes()
	if size == 0 {
		size = blockSize
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	v := volume{ID: idFor("vol", req.GetName()), Name: req.GetName(), Capacity: size, Block: block}
	var old volume
	if err := d.load("volumes", v.ID, &old); err == nil {
		if old.Capacity < size {
			return nil, status.Errorf(codes.AlreadyExists, "volume %s exists with a smaller capacity", req.GetName())
		}
		return &csi.CreateVolumeResponse{Volume: d.csiVolume(old, req.GetVolumeContentSource())}, nil
	}
	img := d.path("volumes", v.ID, ".img")
	switch {
	case req.GetVolumeContentSource().GetSnapshot() != nil:
		sid := req.GetVolumeContentSource().GetSnapshot().GetSnapshotId()
		var s snapshot
		if err := d.load("snapshots", sid, &s); err != nil {
			return nil, status.Errorf(codes.NotFound, "snapshot %s: %v", sid, err)
		}
		if s.Size > size {
			return nil, status.Errorf(codes.OutOfRange, "snapshot %s is larger (%d) than the volume (%d)", sid, s.Size, size)
		}
		if err := copySparse(d.path("snapshots", sid, ".img"), img, size); err != nil {
			return nil, status.Errorf(codes.Internal, "restore %s: %v", sid, err)
		}
		v.Source = "snapshot:" + sid
	case req.GetVolumeContentSource().GetVolume() != nil:
		src := req.GetVolumeContentSource().GetVolume().GetVolumeId()
		var sv volume
		if err := d.load("volumes", src, &sv); err != nil {
			return nil, status.Errorf(codes.NotFound, "volume %s: %v", src, err)
		}
		if err := copySparse(d.path("volumes", src, ".img"), img, size); err != nil {
			return nil, status.Errorf(codes.Internal, "clone %s: %v", src, err)
		}
		v.Source = "volume:" + src
	default:
		f, err := os.Create(img)
		if err == nil {
			err = f.Truncate(size)
			f.Close()
		}
		if err != nil {
			return nil, status.Errorf(codes.Internal, "create %s: %v", img, err)
		}
	}
	if err := d.store("volumes", v.ID, v); err != nil {
		return nil, status.Errorf(codes.Internal, "store volume: %v", err)
	}
	log.Printf("created volume %s (%s, %d bytes, block=%v, source=%q)", v.ID, v.Name, size, block, v.Source)
	return &csi.CreateVolumeResponse{Volume: d.csiVolume(v, req.GetVolumeContentSource())}, nil
}

func (d *driver) csiVolume(v volume, src *csi.VolumeContentSource) *csi.Volume {
	return &csi.Volume{VolumeId: v.ID, CapacityBytes: v.Capacity, ContentSource: src,
		VolumeContext: map[string]string{"path": d.path("volumes", v.ID, ".img")}}
}

func (d *driver) DeleteVolume(_ context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id missing")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	os.Remove(d.path("volumes", req.GetVolumeId(), ".img"))
	os.Remove(d.path("volumes", req.GetVolumeId(), ".json"))
	log.Printf("deleted volume %s", req.GetVolumeId())
	return &csi.DeleteVolumeResponse{}, nil
}

func (d *driver) ValidateVolumeCapabilities(_ context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	var v volume
	if err := d.load("volumes", req.GetVolumeId(), &v); err != nil {
		return nil, status.Errorf(codes.NotFound, "volume %s", req.GetVolumeId())
	}
	return &csi.ValidateVolumeCapabilitiesResponse{Confirmed: &csi.ValidateVolumeCapabilitiesResponse_Confirmed{
		VolumeCapabilities: req.GetVolumeCapabilities()}}, nil
}

func (d *driver) ControllerExpandVolume(_ context.Context, req *csi.ControllerExpandVolumeRequest) (*csi.ControllerExpandVolumeResponse, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var v volume
	if err := d.load("volumes", req.GetVolumeId(), &v); err != nil {
		return nil, status.Errorf(codes.NotFound, "volume %s", req.GetVolumeId())
	}
	if size := req.GetCapacityRange().GetRequiredBytes(); size > v.Capacity {
		if err := os.Truncate(d.path("volumes", v.ID, ".img"), size); err != nil {
			return nil, status.Errorf(codes.Internal, "expand: %v", err)
		}
		v.Capacity = size
		if err := d.store("volumes", v.ID, v); err != nil {
			return nil, status.Errorf(codes.Internal, "store volume: %v", err)
		}
	}
	return &csi.ControllerExpandVolumeResponse{CapacityBytes: v.Capacity, NodeExpansionRequired: false}, nil
}

// takeSnapshot copies volume vid into a new snapshot (d.mu held).
func (d *driver) takeSnapshot(name, vid, groupID string) (snapshot, error) {
	s := snapshot{ID: idFor("snap", name), Name: name, VolumeID: vid, GroupID: groupID}
	var old snapshot
	if err := d.load("snapshots", s.ID, &old); err == nil {
		if old.VolumeID != vid {
			return s, status.Errorf(codes.AlreadyExists, "snapshot %s exists for another volume", name)
		}
		return old, nil
	}
	var v volume
	if err := d.load("volumes", vid, &v); err != nil {
		return s, status.Errorf(codes.NotFound, "volume %s", vid)
	}
	// A published volume: flush what reached its loop device (the "disk"),
	// as a storage system's snapshot sees what was written to it.
	for _, p := range d.publications() {
		if p.VolumeID == vid && p.Loop != "" {
			if f, err := os.OpenFile(p.Loop, os.O_RDONLY, 0); err == nil {
				f.Sync()
				f.Close()
			}
		}
	}
	if err := copySparse(d.path("volumes", vid, ".img"), d.path("snapshots", s.ID, ".img"), v.Capacity); err != nil {
		return s, status.Errorf(codes.Internal, "snapshot %s: %v", vid, err)
	}
	s.Size = v.Capacity
	s.Created = time.Now().UTC()
	if err := d.store("snapshots", s.ID, s); err != nil {
		return s, status.Errorf(codes.Internal, "store snapshot: %v", err)
	}
	log.Printf("created snapshot %s (%s) of %s group=%q", s.ID, name, vid, groupID)
	return s, nil
}

func csiSnapshot(s snapshot) *csi.Snapshot {
	return &csi.Snapshot{SnapshotId: s.ID, SourceVolumeId: s.VolumeID, SizeBytes: s.Size,
		CreationTime: timestamppb.New(s.Created), ReadyToUse: true, GroupSnapshotId: s.GroupID}
}

func (d *driver) CreateSnapshot(_ context.Context, req *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error) {
	if req.GetName() == "" || req.GetSourceVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "name or source volume id missing")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	s, err := d.takeSnapshot(req.GetName(), req.GetSourceVolumeId(), "")
	if err != nil {
		return nil, err
	}
	return &csi.CreateSnapshotResponse{Snapshot: csiSnapshot(s)}, nil
}

func (d *driver) deleteSnapshot(id string) {
	os.Remove(d.path("snapshots", id, ".img"))
	os.Remove(d.path("snapshots", id, ".json"))
	log.Printf("deleted snapshot %s", id)
}

func (d *driver) DeleteSnapshot(_ context.Context, req *csi.DeleteSnapshotRequest) (*csi.DeleteSnapshotResponse, error) {
	if req.GetSnapshotId() == "" {
		return nil, status.Error(codes.InvalidArgument, "snapshot id missing")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	var s snapshot
	if err := d.load("snapshots", req.GetSnapshotId(), &s); err == nil && s.GroupID != "" {
		if _, err := os.Stat(d.path("groups", s.GroupID, ".json")); err == nil {
			return nil, status.Errorf(codes.FailedPrecondition, "snapshot %s belongs to group %s", s.ID, s.GroupID)
		}
	}
	d.deleteSnapshot(req.GetSnapshotId())
	return &csi.DeleteSnapshotResponse{}, nil
}

func (d *driver) ListSnapshots(_ context.Context, req *csi.ListSnapshotsRequest) (*csi.ListSnapshotsResponse, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []*csi.ListSnapshotsResponse_Entry
	for _, id := range d.list("snapshots") {
		var s snapshot
		if d.load("snapshots", id, &s) != nil {
			continue
		}
		if (req.GetSnapshotId() != "" && s.ID != req.GetSnapshotId()) ||
			(req.GetSourceVolumeId() != "" && s.VolumeID != req.GetSourceVolumeId()) {
			continue
		}
		out = append(out, &csi.ListSnapshotsResponse_Entry{Snapshot: csiSnapshot(s)})
	}
	return &csi.ListSnapshotsResponse{Entries: out}, nil
}

func (d *driver) GetSnapshot(_ context.Context, req *csi.GetSnapshotRequest) (*csi.GetSnapshotResponse, error) {
	var s snapshot
	if err := d.load("snapshots", req.GetSnapshotId(), &s); err != nil {
		return nil, status.Errorf(codes.NotFound, "snapshot %s", req.GetSnapshotId())
	}
	return &csi.GetSnapshotResponse{Snapshot: csiSnapshot(s)}, nil
}

// GroupController

func (d *driver) GroupControllerGetCapabilities(context.Context, *csi.GroupControllerGetCapabilitiesRequest) (*csi.GroupControllerGetCapabilitiesResponse, error) {
	return &csi.GroupControllerGetCapabilitiesResponse{Capabilities: []*csi.GroupControllerServiceCapability{{
		Type: &csi.GroupControllerServiceCapability_Rpc{Rpc: &csi.GroupControllerServiceCapability_RPC{
			Type: csi.GroupControllerServiceCapability_RPC_CREATE_DELETE_GET_VOLUME_GROUP_SNAPSHOT}}}}}, nil
}

func (d *driver) csiGroup(g group) (*csi.VolumeGroupSnapshot, error) {
	out := &csi.VolumeGroupSnapshot{GroupSnapshotId: g.ID, CreationTime: timestamppb.New(g.Created), ReadyToUse: true}
	for _, id := range g.Snapshots {
		var s snapshot
		if err := d.load("snapshots", id, &s); err != nil {
			return nil, status.Errorf(codes.Internal, "group %s member %s: %v", g.ID, id, err)
		}
		out.Snapshots = append(out.Snapshots, csiSnapshot(s))
	}
	return out, nil
}

func (d *driver) CreateVolumeGroupSnapshot(_ context.Context, req *csi.CreateVolumeGroupSnapshotRequest) (*csi.CreateVolumeGroupSnapshotResponse, error) {
	if req.GetName() == "" || len(req.GetSourceVolumeIds()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "name or source volume ids missing")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	g := group{ID: idFor("group", req.GetName()), Name: req.GetName()}
	var old group
	if err := d.load("groups", g.ID, &old); err == nil {
		gs, err := d.csiGroup(old)
		if err != nil {
			return nil, err
		}
		return &csi.CreateVolumeGroupSnapshotResponse{GroupSnapshot: gs}, nil
	}
	ids := append([]string(nil), req.GetSourceVolumeIds()...)
	sort.Strings(ids)
	for _, vid := range ids {
		s, err := d.takeSnapshot(req.GetName()+"/"+vid, vid, g.ID)
		if err != nil {
			for _, id := range g.Snapshots {
				d.deleteSnapshot(id)
			}
			return nil, err
		}
		g.Snapshots = append(g.Snapshots, s.ID)
	}
	g.Created = time.Now().UTC()
	if err := d.store("groups", g.ID, g); err != nil {
		return nil, status.Errorf(codes.Internal, "store group: %v", err)
	}
	log.Printf("created group snapshot %s (%s) of %v", g.ID, g.Name, ids)
	gs, err := d.csiGroup(g)
	if err != nil {
		return nil, err
	}
	return &csi.CreateVolumeGroupSnapshotResponse{GroupSnapshot: gs}, nil
}

func (d *driver) DeleteVolumeGroupSnapshot(_ context.Context, req *csi.DeleteVolumeGroupSnapshotRequest) (*csi.DeleteVolumeGroupSnapshotResponse, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var g group
	if err := d.load("groups", req.GetGroupSnapshotId(), &g); err == nil {
		for _, id := range g.Snapshots {
			d.deleteSnapshot(id)
		}
	}
	for _, id := range req.GetSnapshotIds() {
		d.deleteSnapshot(id)
	}
	os.Remove(d.path("groups", req.GetGroupSnapshotId(), ".json"))
	log.Printf("deleted group snapshot %s", req.GetGroupSnapshotId())
	return &csi.DeleteVolumeGroupSnapshotResponse{}, nil
}

func (d *driver) GetVolumeGroupSnapshot(_ context.Context, req *csi.GetVolumeGroupSnapshotRequest) (*csi.GetVolumeGroupSnapshotResponse, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var g group
	if err := d.load("groups", req.GetGroupSnapshotId(), &g); err != nil {
		return nil, status.Errorf(codes.NotFound, "group snapshot %s", req.GetGroupSnapshotId())
	}
	gs, err := d.csiGroup(g)
	if err != nil {
		return nil, err
	}
	return &csi.GetVolumeGroupSnapshotResponse{GroupSnapshot: gs}, nil
}

// SnapshotMetadata

// blocks streams the fixed-size blocks from offset on for which keep(target,
// base) holds, in batches of at most max, through send.
func (d *driver) blocks(target, base string, offset int64, max int32, send func(capacity int64, b []*csi.BlockMetadata) error) error {
	var s snapshot
	if err := d.load("snapshots", target, &s); err != nil {
		return status.Errorf(codes.NotFound, "snapshot %s", target)
	}
	t, err := os.Open(d.path("snapshots", target, ".img"))
	if err != nil {
		return status.Errorf(codes.Internal, "open %s: %v", target, err)
	}
	defer t.Close()
	var b *os.File
	if base != "" {
		var bs snapshot
		if err := d.load("snapshots", base, &bs); err != nil {
			return status.Errorf(codes.NotFound, "snapshot %s", base)
		}
		if bs.VolumeID != s.VolumeID {
			return status.Errorf(codes.InvalidArgument, "snapshots %s and %s are of different volumes", base, target)
		}
		if b, err = os.Open(d.path("snapshots", base, ".img")); err != nil {
			return status.Errorf(codes.Internal, "open %s: %v", base, err)
		}
		defer b.Close()
	}
	if max <= 0 {
		max = 256
	}
	tb, bb, zero := make([]byte, blockSize), make([]byte, blockSize), make([]byte, blockSize)
	var batch []*csi.BlockMetadata
	for off := offset / blockSize * blockSize; off < s.Size; off += blockSize {
		n, err := t.ReadAt(tb, off)
		if err != nil && !errors.Is(err, io.EOF) {
			return status.Errorf(codes.Internal, "read %s: %v", target, err)
		}
		changed := false
		if b == nil {
			changed = !bytes.Equal(tb[:n], zero[:n])
		} else {
			m, err := b.ReadAt(bb, off)
			if err != nil && !errors.Is(err, io.EOF) {
				return status.Errorf(codes.Internal, "read %s: %v", base, err)
			}
			for i := m; i < n; i++ {
				bb[i] = 0
			}
			changed = !bytes.Equal(tb[:n], bb[:n])
		}
		if changed {
			batch = append(batch, &csi.BlockMetadata{ByteOffset: off, SizeBytes: blockSize})
			if int32(len(batch)) == max {
				if err := send(s.Size, batch); err != nil {
					return err
				}
				batch = nil
			}
		}
	}
	if len(batch) > 0 {
		return send(s.Size, batch)
	}
	return nil
}

func (d *driver) GetMetadataAllocated(req *csi.GetMetadataAllocatedRequest, srv csi.SnapshotMetadata_GetMetadataAllocatedServer) error {
	return d.blocks(req.GetSnapshotId(), "", req.GetStartingOffset(), req.GetMaxResults(), func(c int64, b []*csi.BlockMetadata) error {
		return srv.Send(&csi.GetMetadataAllocatedResponse{BlockMetadataType: csi.BlockMetadataType_FIXED_LENGTH,
			VolumeCapacityBytes: c, BlockMetadata: b})
	})
}

func (d *driver) GetMetadataDelta(req *csi.GetMetadataDeltaRequest, srv csi.SnapshotMetadata_GetMetadataDeltaServer) error {
	if req.GetBaseSnapshotId() == "" {
		return status.Error(codes.InvalidArgument, "base snapshot id missing")
	}
	return d.blocks(req.GetTargetSnapshotId(), req.GetBaseSnapshotId(), req.GetStartingOffset(), req.GetMaxResults(), func(c int64, b []*csi.BlockMetadata) error {
		return srv.Send(&csi.GetMetadataDeltaResponse{BlockMetadataType: csi.BlockMetadataType_FIXED_LENGTH,
			VolumeCapacityBytes: c, BlockMetadata: b})
	})
}

// Node

func (d *driver) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	return &csi.NodeGetInfoResponse{NodeId: *nodeID}, nil
}

// NodeGetCapabilities: no STAGE_UNSTAGE_VOLUME (a publish does everything).
func (d *driver) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	return &csi.NodeGetCapabilitiesResponse{}, nil
}

// publication is a published target: which volume, through which loop device.
type publication struct {
	VolumeID string `json:"volumeId"`
	Target   string `json:"target"`
	Loop     string `json:"loop"`
	Block    bool   `json:"block"`
	ReadOnly bool   `json:"readOnly"`
}

func run(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// mounted reports whether path is a mount point (in /proc/self/mountinfo).
func mounted(path string) bool {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && unescapeMount(f[4]) == path {
			return true
		}
	}
	return false
}

func unescapeMount(s string) string {
	r := strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`)
	return r.Replace(s)
}

// loopFor returns a loop device attached to file (d.mu held): one already
// attached (another publication of the same volume shares it), else a new one.
func loopFor(file string) (string, error) {
	out, err := run("losetup", "--noheadings", "--output", "NAME", "--associated", file)
	if err != nil {
		return "", err
	}
	if f := strings.Fields(out); len(f) > 0 {
		return f[0], nil
	}
	out, err = run("losetup", "--find", "--show", file)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(out), nil
}

func (d *driver) publications() []publication {
	var out []publication
	for _, id := range d.list("publications") {
		var p publication
		if d.load("publications", id, &p) == nil {
			out = append(out, p)
		}
	}
	return out
}

func (d *driver) NodePublishVolume(_ context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	target := req.GetTargetPath()
	if req.GetVolumeId() == "" || target == "" || req.GetVolumeCapability() == nil {
		return nil, status.Error(codes.InvalidArgument, "volume id, target path or volume capability missing")
	}
	block := req.GetVolumeCapability().GetBlock() != nil
	mnt := req.GetVolumeCapability().GetMount()
	if !block && mnt == nil {
		return nil, status.Error(codes.InvalidArgument, "access type neither block nor mount")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	var v volume
	if err := d.load("volumes", req.GetVolumeId(), &v); err != nil {
		return nil, status.Errorf(codes.NotFound, "volume %s", req.GetVolumeId())
	}
	pid := idFor("pub", target)
	var old publication
	if err := d.load("publications", pid, &old); err == nil && mounted(target) {
		if old.VolumeID != v.ID || old.Block != block {
			return nil, status.Errorf(codes.AlreadyExists, "%s is published for volume %s (block=%v)", target, old.VolumeID, old.Block)
		}
		return &csi.NodePublishVolumeResponse{}, nil
	}
	img := d.path("volumes", v.ID, ".img")
	loop, err := loopFor(img)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "loop device for %s: %v", v.ID, err)
	}
	p := publication{VolumeID: v.ID, Target: target, Loop: loop, Block: block, ReadOnly: req.GetReadonly()}
	// Stored before mounting, so that an unpublish after a failure finds the loop device.
	if err := d.store("publications", pid, p); err != nil {
		return nil, status.Errorf(codes.Internal, "store publication: %v", err)
	}
	fail := func(err error) (*csi.NodePublishVolumeResponse, error) {
		d.release(pid, p)
		return nil, status.Errorf(codes.Internal, "publish %s at %s: %v", v.ID, target, err)
	}
	if block {
		f, err := os.OpenFile(target, os.O_CREATE|os.O_RDONLY, 0o600)
		if err != nil {
			return fail(err)
		}
		f.Close()
		if _, err := run("mount", "--bind", loop, target); err != nil {
			return fail(err)
		}
		if p.ReadOnly {
			if _, err := run("mount", "-o", "remount,bind,ro", target); err != nil {
				return fail(err)
			}
		}
	} else {
		fsType := mnt.GetFsType()
		if fsType == "" {
			fsType = "ext4"
		}
		// blkid -p exits 2 when it finds no filesystem: a blank volume,
		// formatted on first use as a real driver does.
		switch out, err := exec.Command("blkid", "-p", loop).CombinedOutput(); {
		case err == nil:
		case isExit(err, 2):
			if _, err := run("mkfs."+fsType, "-q", loop); err != nil {
				return fail(err)
			}
			log.Printf("formatted %s (%s) as %s", v.ID, loop, fsType)
		default:
			return fail(fmt.Errorf("blkid -p %s: %v: %s", loop, err, out))
		}
		if err := os.MkdirAll(target, 0o750); err != nil {
			return fail(err)
		}
		opts := append([]string(nil), mnt.GetMountFlags()...)
		if p.ReadOnly {
			opts = append(opts, "ro")
		}
		args := []string{"-t", fsType}
		if len(opts) > 0 {
			args = append(args, "-o", strings.Join(opts, ","))
		}
		if _, err := run("mount", append(args, loop, target)...); err != nil {
			return fail(err)
		}
	}
	log.Printf("published %s (%s, block=%v, ro=%v) at %s", v.ID, loop, block, p.ReadOnly, target)
	return &csi.NodePublishVolumeResponse{}, nil
}

func isExit(err error, code int) bool {
	var ee *exec.ExitError
	return errors.As(err, &ee) && ee.ExitCode() == code
}

// release unmounts a publication's target, removes it, detaches its loop
// device unless another publication uses it, and forgets it (d.mu held).
func (d *driver) release(pid string, p publication) error {
	for mounted(p.Target) {
		if _, err := run("umount", p.Target); err != nil {
			return err
		}
	}
	if err := os.Remove(p.Target); err != nil && !os.IsNotExist(err) {
		return err
	}
	os.Remove(d.path("publications", pid, ".json"))
	shared := false
	for _, o := range d.publications() {
		if o.Loop == p.Loop {
			shared = true
		}
	}
	if !shared && p.Loop != "" {
		// Only if it still serves this volume's file (not reused since).
		out, _ := run("losetup", "--noheadings", "--output", "BACK-FILE", p.Loop)
		if strings.TrimSpace(out) == d.path("volumes", p.VolumeID, ".img") {
			if _, err := run("losetup", "--detach", p.Loop); err != nil {
				return err
			}
		}
	}
	log.Printf("unpublished %s (%s) from %s", p.VolumeID, p.Loop, p.Target)
	return nil
}

func (d *driver) NodeUnpublishVolume(_ context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	target := req.GetTargetPath()
	if req.GetVolumeId() == "" || target == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id or target path missing")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	pid := idFor("pub", target)
	var p publication
	if err := d.load("publications", pid, &p); err != nil {
		// Not ours (or already unpublished): make sure nothing is left mounted.
		p = publication{VolumeID: req.GetVolumeId(), Target: target}
	}
	if err := d.release(pid, p); err != nil {
		return nil, status.Errorf(codes.Internal, "unpublish %s from %s: %v", req.GetVolumeId(), target, err)
	}
	return &csi.NodeUnpublishVolumeResponse{}, nil
}

func main() {
	flag.Parse()
	if *endpoint == "" || *dataDir == "" {
		log.Fatal("-endpoint and -datadir are required")
	}
	sock := strings.TrimPrefix(*endpoint, "unix://")
	d := &driver{dir: *dataDir}
	for _, k := range []string{"volumes", "snapshots", "groups", "publications"} {
		if err := os.MkdirAll(filepath.Join(d.dir, k), 0o755); err != nil {
			log.Fatal(err)
		}
	}
	os.Remove(sock)
	l, err := net.Listen("unix", sock)
	if err != nil {
		log.Fatalf("listen %s: %v", sock, err)
	}
	s := grpc.NewServer(grpc.UnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		resp, err := h(ctx, req)
		if err != nil {
			log.Printf("%s: %v", info.FullMethod, err)
		}
		return resp, err
	}))
	csi.RegisterIdentityServer(s, d)
	csi.RegisterControllerServer(s, d)
	csi.RegisterGroupControllerServer(s, d)
	csi.RegisterSnapshotMetadataServer(s, d)
	csi.RegisterNodeServer(s, d)
	go func() {
		c := make(chan os.Signal, 1)
		signal.Notify(c, syscall.SIGTERM, syscall.SIGINT)
		<-c
		s.Stop()
	}()
	log.Printf("%s %s serving on %s, data in %s", *driverName, version, sock, d.dir)
	if err := s.Serve(l); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
