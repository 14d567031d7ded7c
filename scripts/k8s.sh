# Sourced by scripts/setup, scripts/kubelet-build, scripts/k8s-node and scripts/k8s-node-test:
# the kubelet the node scripts run, and where it is. Built from the Go module proxy once,
# into a fixed root outside the clone (scripts/kubelet-build), like youki.
KUBELET_VERSION=v1.35.4
KUBELET_ROOT=${TETHER_KUBELET_ROOT:-/var/cache/tether/kubelet-$KUBELET_VERSION}
KUBELET=$KUBELET_ROOT/bin/kubelet

# True if $KUBELET is kubelet $KUBELET_VERSION.
kubelet_ready() {
  local v
  v=$("$KUBELET" --version 2>/dev/null) || return 1
  [ "$v" = "Kubernetes $KUBELET_VERSION" ]
}
