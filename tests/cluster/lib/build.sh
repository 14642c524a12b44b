# Builds the cluster's binaries from the Go module proxy into $CLUSTER_BIN
# (sourced by up.sh after lib/common.sh). Each group is built once per version:
# a stamp file in $CLUSTER_BIN records what is there.
# shellcheck shell=bash

export GOFLAGS="${GOFLAGS:--buildvcs=false}"
export CGO_ENABLED="${CGO_ENABLED:-0}"
GO_BUILD=(go build -p 2 -trimpath)

# new_module DIR NAME: a fresh throwaway module DIR for building NAME.
new_module() {
  rm -rf "$1"; mkdir -p "$1"
  (cd "$1" && go mod init "lifeboat.test/cluster-build/$2" >/dev/null 2>&1)
}

# timed NAME COMMAND...: run COMMAND in the build log, record its wall time.
timed() {
  local name=$1; shift
  local start=$SECONDS
  log "building $name (log: $BUILD_LOG)"
  if ! "$@" >>"$BUILD_LOG" 2>&1; then
    die "building $name failed; read $BUILD_LOG"
  fi
  echo "$name $((SECONDS - start))s $(date -u +%FT%TZ)" >>"$CLUSTER_CACHE/build-times.txt"
  log "built $name in $((SECONDS - start))s"
}

build_k8s() {
  local stamp="$CLUSTER_BIN/.kubernetes-$K8S_VERSION"
  [[ -f $stamp ]] && return 0
  local dir="$CLUSTER_CACHE/src/kubernetes" minor major
  major=${K8S_VERSION#v}; major=${major%%.*}
  minor=${K8S_VERSION#v*.}; minor=${minor%%.*}
  local staging_version="v0.${K8S_VERSION#v*.}"
  new_module "$dir" kubernetes
  (
    cd "$dir"
    go mod download -json "k8s.io/kubernetes@$K8S_VERSION" >/dev/null
    local kmod
    kmod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')
    {
      echo "require k8s.io/kubernetes $K8S_VERSION"
      # Every staging module (replaced by ./staging/... upstream) comes from its
      # published v0.X.Y release instead.
      awk '$2 == "=>" && $3 ~ /^\.\/staging\// {print $1}' "$kmod" | sort -u |
        while read -r m; do echo "replace $m => $m $staging_version"; done
    } >>go.mod
    go mod tidy -e >/dev/null 2>&1 || true
    go get "k8s.io/kubernetes/cmd/kube-apiserver@$K8S_VERSION" \
      "k8s.io/kubernetes/cmd/kube-controller-manager@$K8S_VERSION" \
      "k8s.io/kubernetes/cmd/kubectl@$K8S_VERSION"
  ) >>"$BUILD_LOG" 2>&1 || die "preparing the kubernetes build module failed; read $BUILD_LOG"
  local v=k8s.io/component-base/version cv=k8s.io/client-go/pkg/version
  local ld="-s -w"
  local p
  for p in $v $cv; do
    ld+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=$major -X $p.gitMinor=$minor"
    ld+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  timed "kube-apiserver+kube-controller-manager+kubectl $K8S_VERSION" \
    bash -c "cd '$dir' && ${GO_BUILD[*]} -ldflags='$ld' -o '$CLUSTER_BIN/' \
      k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kubectl"
  touch "$stamp"
}

build_etcd() {
  local stamp="$CLUSTER_BIN/.etcd-$ETCD_VERSION"
  [[ -f $stamp ]] && return 0
  local dir="$CLUSTER_CACHE/src/etcd"
  new_module "$dir" etcd
  (cd "$dir" && go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION") >>"$BUILD_LOG" 2>&1 ||
    die "preparing the etcd build module failed; read $BUILD_LOG"
  timed "etcd $ETCD_VERSION" bash -c "cd '$dir' && ${GO_BUILD[*]} -ldflags='-s -w' -o '$CLUSTER_BIN/etcd' go.etcd.io/etcd/server/v3"
  touch "$stamp"
}

# build_upstream NAME MODULE VERSION LDFLAGS PACKAGE...: build the commands
# PACKAGE... of MODULE@VERSION into $CLUSTER_BIN, in a throwaway module that
# repeats MODULE's own replace directives (a replace by a local directory, the
# module's own sub-module, becomes that sub-module's published release:
# $LOCAL_REPLACE_VERSION if set, else VERSION).
build_upstream() {
  local name=$1 module=$2 version=$3 ldflags=$4; shift 4
  local key stamp
  key=$(echo "$module $ldflags $* ${CSI_K8S_LIBS:-} ${LOCAL_REPLACE_VERSION:-}" | sha256sum | cut -c1-12)
  stamp="$CLUSTER_BIN/.$name-$version-$key"
  [[ -f $stamp ]] && return 0
  local dir="$CLUSTER_CACHE/src/$name"
  new_module "$dir" "$name"
  (
    cd "$dir"
    local gomod
    gomod=$(go mod download -json "$module@$version" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')
    [[ -n $gomod ]] || exit 1
    local args=()
    while IFS=$'\t' read -r old new newver; do
      if [[ $new == ./* || $new == ../* ]]; then
        new=$old newver=${LOCAL_REPLACE_VERSION:-$version}
      elif [[ -n $CSI_K8S_LIBS && $old == k8s.io/* && $new == "$old" ]]; then
        # One version of the Kubernetes libraries for every sidecar, so that
        # they share the compiled packages in the Go build cache.
        newver=$CSI_K8S_LIBS
      fi
      args+=("-replace=$old=$new@$newver")
    done < <(go mod edit -json "$gomod" | jq -r '(.Replace // [])[] | [.Old.Path, .New.Path, (.New.Version // "")] | @tsv')
    go mod edit "-require=$module@$version" "${args[@]}"
    local p pkgs=()
    for p in "$@"; do pkgs+=("$module/$p@$version"); done
    go get "${pkgs[@]}"
  ) >>"$BUILD_LOG" 2>&1 || die "preparing the $name build module failed; read $BUILD_LOG"
  local p pkgs=()
  for p in "$@"; do pkgs+=("$module/$p"); done
  timed "$name $version" bash -c "cd '$dir' && ${GO_BUILD[*]} -ldflags='-s -w $ldflags' -o '$CLUSTER_BIN/' ${pkgs[*]}"
  touch "$stamp"
}

build_csi() {
  build_upstream external-snapshotter github.com/kubernetes-csi/external-snapshotter/v8 \
    "$SNAPSHOTTER_VERSION" "-X main.version=$SNAPSHOTTER_VERSION" cmd/snapshot-controller cmd/csi-snapshotter
  build_upstream external-provisioner github.com/kubernetes-csi/external-provisioner/v6 \
    "$PROVISIONER_VERSION" "-X main.version=$PROVISIONER_VERSION" cmd/csi-provisioner
  # The sidecar's own client sub-module is served only as v0.1.0. It keeps its
  # own k8s.io libraries (v0.34.0): with v0.37.0 its csi-lib-utils v0.22.0 no
  # longer compiles (otelgrpc.UnaryClientInterceptor is gone).
  CSI_K8S_LIBS="" LOCAL_REPLACE_VERSION=v0.1.0 build_upstream external-snapshot-metadata \
    github.com/kubernetes-csi/external-snapshot-metadata "$SNAPSHOT_METADATA_VERSION" \
    "-X main.version=$SNAPSHOT_METADATA_VERSION" cmd/csi-snapshot-metadata examples/snapshot-metadata-lister
  # The test plugin and the pod runner, from this repository.
  build_local csi-hostpath
  build_local pod-runner
}

# build_local NAME: the Go module tests/cluster/NAME into $CLUSTER_BIN/NAME,
# again whenever its sources change (a stamp named by their content hash).
build_local() {
  local name=$1 sum
  sum=$(cat "$HERE/$name/go.mod" "$HERE/$name/go.sum" "$HERE/$name/"*.go | sha256sum | cut -c1-16)
  if [[ ! -f $CLUSTER_BIN/.$name-$sum || ! -x $CLUSTER_BIN/$name ]]; then
    timed "$name (tests/cluster/$name)" \
      bash -c "cd '$HERE/$name' && ${GO_BUILD[*]} -ldflags='-s -w' -o '$CLUSTER_BIN/$name' ."
    rm -f "$CLUSTER_BIN/.$name-"*
    touch "$CLUSTER_BIN/.$name-$sum"
  fi
}

build_all() {
  mkdir -p "$CLUSTER_BIN"
  # One build at a time per cache: a second up.sh (or build.sh) waits for the first's build
  # and then finds its stamps. The lock is released when this shell exits.
  exec 8>"$CLUSTER_CACHE/build.lock"
  if ! flock -n 8; then
    log "another build into $CLUSTER_CACHE is running; waiting for it"
    flock 8
  fi
  BUILD_LOG="$CLUSTER_CACHE/build.log"
  : >"$BUILD_LOG"
  command -v go >/dev/null || die "go is not installed (needs Go 1.26)"
  command -v jq >/dev/null || die "jq is not installed (apt-get install jq)"
  command -v openssl >/dev/null || die "openssl is not installed (apt-get install openssl)"
  build_etcd
  build_k8s
  build_csi
  flock -u 8
}
