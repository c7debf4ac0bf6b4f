#!/usr/bin/env bash
# Builds kube-apiserver and kube-controller-manager v1.20.2 from Debian bookworm's source package, once;
# with --node also kube-scheduler, kube-proxy, kubelet and the pause binary (tests/k8s/node.py's node).
# Why from source: no image or binary registry is reachable here, but Debian's archive carries the full
# upstream tree (with vendor/). The result is cached outside the repo, keyed by version, so re-runs are
# instant; the apt build deps (etcd for the test harness too) are installed here so CI needs nothing else.
# Prints the bin directory on stdout as its last line.
set -euo pipefail

K8S_VERSION=1.20.2
DEB_VERSION=1.20.5+really1.20.2
# Bump RECIPE when the build itself changes (flags, patches): binaries land in a new directory while
# the unpacked source and Go's build cache are reused.
RECIPE=3
CACHE=${FEDATTN_K8S_CACHE:-/var/cache/fedattn}/k8s-$K8S_VERSION
BIN=$CACHE/bin-r$RECIPE
WANT=(kube-apiserver kube-controller-manager)
# NB: the node's binaries share the tree, GOCACHE and bin directory; their patches touch only kubelet
# packages, so building them later leaves the control plane's binaries (and cache entries) valid.
[ "${1:-}" = "--node" ] && WANT+=(kube-scheduler kube-proxy kubelet pause)

have_all() { for b in "${WANT[@]}"; do [ -x "$BIN/$b" ] || return 1; done; }

need_pkgs=()
pkgs=(etcd-server golang-go golang-github-modern-go-reflect2-dev golang-github-json-iterator-go-dev dpkg-dev)
# NB: what the node runs besides these binaries: the container runtime, the pause binary's compiler and
# libc, the Service-name resolver, kube-proxy's iptables and conntrack, and debootstrap for the images.
[ "${1:-}" = "--node" ] && pkgs+=(docker.io gcc libc6-dev dnsmasq-base iptables conntrack debootstrap)
for p in "${pkgs[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || need_pkgs+=("$p")
done
if [ "${#need_pkgs[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

if have_all; then
    echo "$BIN"
    exit 0
fi

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9
if have_all; then echo "$BIN"; exit 0; fi
started=$(date +%s)

# NB: apt-get source needs a deb-src entry; add one mirroring the existing bookworm 'deb' source.
SRC_LIST=/etc/apt/sources.list.d/fedattn-deb-src.sources
if ! apt-cache showsrc kubernetes 2>/dev/null | grep -q "^Version: $DEB_VERSION-"; then
    cat >"$SRC_LIST" <<SRC
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    apt-get update -qq
fi

GOPATH_DIR=$CACHE/gopath
TREE=$GOPATH_DIR/src/k8s.io/kubernetes
if [ ! -f "$TREE/.fedattn-unpacked" ]; then
    rm -rf "$CACHE/src" "$TREE"
    mkdir -p "$CACHE/src" "$(dirname "$TREE")"
    # NB: the Debian revision (-1.1+deb12uN) moves with security updates; the upstream tree does not.
    (cd "$CACHE/src" && apt-get source -qq kubernetes >/dev/null)
    mv "$CACHE/src/kubernetes-$DEB_VERSION" "$TREE"
    # NB: the vendored reflect2/json-iterator read runtime internals that changed in Go 1.18 and crash
    # the API server at start-up; Debian's newer packages are API compatible.
    for pkg in github.com/modern-go/reflect2 github.com/json-iterator/go; do
        rm -rf "$TREE/vendor/$pkg"
        cp -r "/usr/share/gocode/src/$pkg" "$TREE/vendor/$pkg"
    done
    touch "$TREE/.fedattn-unpacked"
fi

# NB: go-openapi's type validator (two vendored copies) treats a value as null when
# reflect.DeepEqual(reflect.Zero(T), reflect.ValueOf(data)). Built with Go 1.15 (upstream v1.20) that
# only holds for nil maps/pointers; from Go 1.18 on, "" points at the runtime's shared zero buffer too,
# so every empty string in a custom resource is rejected as null. Restore the upstream behaviour.
ZERO_CHECK='reflect.DeepEqual(reflect.Zero(reflect.TypeOf(data)), reflect.ValueOf(data))'
NIL_CHECK='(func() bool { v := reflect.ValueOf(data); return (v.Kind() == reflect.Map || v.Kind() == reflect.Ptr) \&\& v.IsNil() }())'
for f in vendor/k8s.io/kube-openapi/pkg/validation/validate/type.go vendor/github.com/go-openapi/validate/type.go; do
    sed -i "s/$ZERO_CHECK/$NIL_CHECK/" "$TREE/$f"
    grep -q 'v.IsNil() }())' "$TREE/$f" || { echo "build.sh: could not patch $f" >&2; exit 1; }
done

# NB: this VM refuses a negative oom_score_adj (even to root), and the kubelet fails every pod sandbox
# and guaranteed container that asks for one; the node's own processes get --oom-score-adj=0 instead.
sed -i 's/defaultSandboxOOMAdj int = -998/defaultSandboxOOMAdj int = 0/' \
    "$TREE/pkg/kubelet/dockershim/docker_sandbox.go"
sed -i 's/guaranteedOOMScoreAdj int = -997/guaranteedOOMScoreAdj int = 0/' "$TREE/pkg/kubelet/qos/policy.go"
grep -q 'defaultSandboxOOMAdj int = 0' "$TREE/pkg/kubelet/dockershim/docker_sandbox.go" \
    && grep -q 'guaranteedOOMScoreAdj int = 0' "$TREE/pkg/kubelet/qos/policy.go" \
    || { echo "build.sh: could not patch the kubelet's OOM adjustments" >&2; exit 1; }

export GOPATH=$GOPATH_DIR GO111MODULE=off GOTOOLCHAIN=local GOPROXY=off
export GOCACHE=$CACHE/gocache
cd "$TREE"

OPENAPI=pkg/generated/openapi/zz_generated.openapi.go
if [ ! -s "$OPENAPI" ]; then
    go build -o "$CACHE/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen
    # Inputs as upstream's Makefile.generated_files finds them: every package tagged for openapi-gen.
    inputs=$(grep -rl --include='*.go' '+k8s:openapi-gen=true' pkg staging/src vendor/k8s.io 2>/dev/null \
        | xargs -n1 dirname | sort -u \
        | sed -e 's#^staging/src/##' -e 's#^vendor/##' -e 's#^pkg/#k8s.io/kubernetes/pkg/#' \
        | sort -u | paste -sd, -)
    "$CACHE/openapi-gen" --logtostderr -v 1 \
        --input-dirs "$inputs" \
        --output-base "$GOPATH_DIR/src" \
        --output-package k8s.io/kubernetes/pkg/generated/openapi \
        --output-file-base zz_generated.openapi \
        --go-header-file hack/boilerplate/boilerplate.generatego.txt \
        --report-filename "$CACHE/openapi-violations.txt"
fi

mkdir -p "$BIN"
# NB: in GOPATH mode vendored packages are named k8s.io/kubernetes/vendor/..., as hack/lib/version.sh
# does; the API server's /version (which Helm's kubeVersion checks read) comes from client-go's copy.
ldflags="-s -w"
for V in k8s.io/kubernetes/vendor/k8s.io/component-base/version k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version; do
    ldflags="$ldflags -X $V.gitVersion=v$K8S_VERSION -X $V.gitMajor=1 -X $V.gitMinor=20 -X $V.gitTreeState=clean"
done
for b in "${WANT[@]}"; do
    if [ "$b" = pause ]; then
        # The pod sandbox's process, as upstream's build/pause/Makefile compiles it (no image registry).
        [ -x "$BIN/pause" ] || gcc -Os -Wall -Werror -static -DVERSION=v3.4-fedattn -o "$BIN/pause" \
            build/pause/linux/pause.c
        continue
    fi
    [ -x "$BIN/$b" ] || go build -ldflags "$ldflags" -o "$BIN/$b.tmp" "./cmd/$b"
    mv -f "$BIN/$b.tmp" "$BIN/$b" 2>/dev/null || true
done
echo "built in $(( $(date +%s) - started )) s" >&2
echo "$BIN"
