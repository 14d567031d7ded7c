# Sourced by scripts/setup, scripts/test and scripts/bench: the OCI runtimes tether is
# tested on beside runc, and where they are.
#
# youki is built from crates.io once, into a fixed root outside the clone, so a second
# run (or a fresh clone on the same machine) finds it there and does not rebuild it.
YOUKI_VERSION=0.7.0
YOUKI_ROOT=${TETHER_YOUKI_ROOT:-/var/cache/tether/youki-$YOUKI_VERSION}
YOUKI=$YOUKI_ROOT/bin/youki
# crun from Debian, run through a wrapper that hides the cgroup v2 mount from it on a
# hybrid host (see the wrapper for why).
CRUN_HYBRID=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/tests/runtimes/crun-hybrid

# True if $YOUKI is youki $YOUKI_VERSION. (Not `| grep -q`: under pipefail, youki
# killed by SIGPIPE after grep's early exit would make the check fail at random.)
youki_ready() {
  local v
  v=$("$YOUKI" --version 2>/dev/null) || return 1
  [[ $'\n'"$v"$'\n' == *$'\n'"youki version: $YOUKI_VERSION"$'\n'* ]]
}
