#!/usr/bin/env bash
# The unit under a real systemd: boot systemd 252 (Debian 12) in systemd-nspawn, install tacore
# with `make install` (from a wheelhouse built here, no network needed inside), then check:
#   1. `systemctl start tacore` returns after READY and the unit is active (running);
#   2. `tacorectl status` answers inside;
#   2b. other users: a member of tacore-clients ([broker] group) calls echo through the frontend
#      (tacorectl and the client library) without root, someone outside the group and someone
#      added after logging in get exit 4 and a message naming the socket and the group, and
#      root still runs `tacorectl status`;
#   3. `systemctl reload tacore` applies a changed configuration;
#   4. a frozen daemon (SIGSTOP of the main pid) is killed by the watchdog and restarted;
#   5. `systemctl stop tacore` leaves no process of the unit behind;
#   6. with the tcp drop-in (systemd/tcp.conf) and [http] listen, /healthz answers;
#   7. a [control] group other than tacore-clients, with the drop-in README describes: the
#      runtime directory is 0711, each socket has its own group, both kinds of user get in;
# and prints the timings and the exposure score (which must stay <= 1.0). Needs root; without
# root or nspawn it says SKIPPED and why.
#
# The Debian root file system is built once with debootstrap (1-2 minutes) and cached in
# $TACORE_SYSTEMD_ROOTFS (default /var/tmp/tacore-systemd-rootfs); each run boots a throw-away
# overlay on top of it, so nothing a run does is kept.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
SRC=$(cd "$HERE/../.." && pwd)
ROOTFS=${TACORE_SYSTEMD_ROOTFS:-/var/tmp/tacore-systemd-rootfs}
PYTHON=${PYTHON:-$SRC/.venv/bin/python}
PACKAGES=systemd,systemd-sysv,dbus,python3,python3-venv,procps,make

skip() { echo "SKIPPED (systemd test): $*"; exit 0; }
fail() { echo "FAILED: $*" >&2; journal; exit 1; }
journal() { :; }  # until the container runs
step() { printf '\n=== %s\n' "$*"; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.2f", b-a}'; }

[ "$(id -u)" = 0 ] || skip "needs root (systemd-nspawn)"
missing=()
command -v systemd-nspawn >/dev/null || missing+=(systemd-container)
command -v nsenter >/dev/null || missing+=(util-linux)
[ -e "$ROOTFS/.ready" ] || command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
  step "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 ||
    { apt-get update -q >/dev/null 2>&1 &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null 2>&1; } ||
    skip "cannot install ${missing[*]}"
fi

mirror() {  # the host's own Debian mirror
  { cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/{print $2; exit}'; } |
    grep . || awk '$1=="deb"{for(i=2;i<=NF;i++) if($i ~ /^[a-z]+:\/\//){print $i; exit}}' \
      /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null
}
if [ ! -e "$ROOTFS/.ready" ]; then
  step "building $ROOTFS with debootstrap (once)"
  t0=$(now)
  rm -rf "$ROOTFS.partial"
  debootstrap --variant=minbase --include="$PACKAGES" bookworm "$ROOTFS.partial" "$(mirror)" \
    > "$ROOTFS.log" 2>&1 || { tail -20 "$ROOTFS.log"; fail "debootstrap"; }
  rm -f "$ROOTFS.partial/etc/systemd/system/getty.target.wants/"*
  touch "$ROOTFS.partial/.ready"
  rm -rf "$ROOTFS"; mv "$ROOTFS.partial" "$ROOTFS"; rm -f "$ROOTFS.log"
  echo "root file system built in $(since "$t0") s"
fi

WORK=$(mktemp -d /tmp/tacore-systemd.XXXXXX)
NSPAWN=""
CGROUPS=()
cleanup() {
  set +e
  if [ -n "$NSPAWN" ] && kill -0 "$NSPAWN" 2>/dev/null; then
    kill -TERM "$NSPAWN"  # nspawn asks the container's systemd to halt
    for _ in $(seq 1 50); do kill -0 "$NSPAWN" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$NSPAWN" 2>/dev/null
    wait "$NSPAWN" 2>/dev/null
  fi
  for cg in ${CGROUPS[@]+"${CGROUPS[@]}"}; do
    [ -d "$cg" ] && find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step "building the wheelhouse"
"$PYTHON" -m pip wheel --quiet --wheel-dir "$WORK/wheels" "$SRC" || fail "pip wheel"
mkdir "$WORK/src"  # the tree make install needs, without the venv and git history
tar -C "$SRC" --exclude=./.venv --exclude=./.git --exclude=./build -cf - . | tar -C "$WORK/src" -xf -

step "booting systemd"
# nspawn --keep-unit wants a cgroup of its own in each hierarchy this host has.
v1=$(awk -F: '$2=="name=systemd"{print $3}' /proc/self/cgroup)
v2=$(awk -F: '$1=="0"{print $3}' /proc/self/cgroup)
[ -n "$v1" ] && [ -d /sys/fs/cgroup/systemd ] && CGROUPS+=("/sys/fs/cgroup/systemd${v1%/}/tacore-test-$$")
if [ -e /sys/fs/cgroup/unified/cgroup.procs ]; then CGROUPS+=("/sys/fs/cgroup/unified${v2%/}/tacore-test-$$")
elif [ -e /sys/fs/cgroup/cgroup.procs ]; then CGROUPS+=("/sys/fs/cgroup${v2%/}/tacore-test-$$"); fi
for cg in ${CGROUPS[@]+"${CGROUPS[@]}"}; do mkdir -p "$cg"; done
t0=$(now)
CGS="${CGROUPS[*]:-}" unshare --mount --propagation private -- sh -c '
  for cg in $CGS; do echo $$ > "$cg/cgroup.procs"; done
  mount -t tmpfs -o mode=755 tmpfs /run/systemd 2>/dev/null || mount -t tmpfs -o mode=755 tmpfs /run
  exec systemd-nspawn "$@"' nspawn \
  --quiet --directory="$ROOTFS" --volatile=overlay --boot --machine="tacore-test-$$" \
  --register=no --keep-unit --console=pipe --private-network \
  --capability=CAP_BPF --system-call-filter=bpf \
  --bind-ro="$WORK/wheels:/wheels" --bind-ro="$WORK/src:/src-ro" \
  > "$WORK/console.log" 2>&1 < /dev/null &
NSPAWN=$!
LEADER=""
for _ in $(seq 1 200); do
  LEADER=$(awk '{print $1}' "/proc/$NSPAWN/task/$NSPAWN/children" 2>/dev/null || true)
  [ -n "$LEADER" ] && [ "$(cat "/proc/$LEADER/comm" 2>/dev/null)" = systemd ] && break
  kill -0 "$NSPAWN" 2>/dev/null || { cat "$WORK/console.log"; skip "systemd-nspawn cannot run here"; }
  LEADER=""; sleep 0.05
done
[ -n "$LEADER" ] || { cat "$WORK/console.log"; skip "the container's systemd did not start"; }
in_c() { nsenter --target "$LEADER" --all -- "$@"; }
journal() {
  if [ -n "${LEADER:-}" ]; then in_c journalctl --no-pager -o short-precise -u tacore -n 60 || true; fi
}
for _ in $(seq 1 120); do
  state=$(timeout 60 nsenter --target "$LEADER" --all -- systemctl is-system-running --wait 2>/dev/null || true)
  case "$state" in running|degraded) break ;; esac
  sleep 0.25
done
echo "booted in $(since "$t0") s ($state), systemd $(in_c systemctl --version | awk 'NR==1{print $2}')"

step "make install"
in_c sh -c 'cp -r /src-ro /src && make -C /src install INSTALL_FROM=tacore \
  PIP_ARGS="--no-index --find-links /wheels"' || fail "make install"
in_c systemd-analyze verify /etc/systemd/system/tacore.service || fail "systemd-analyze verify"
# Test timings: a short watchdog so its test is quick; everything else as installed.
in_c mkdir -p /etc/systemd/system/tacore.service.d
in_c sh -c 'printf "[Service]\nWatchdogSec=3\n" > /etc/systemd/system/tacore.service.d/test.conf'
in_c systemctl daemon-reload
exposure=$(systemd-analyze security --offline=true "$SRC/systemd/tacore.service" 2>/dev/null |
           awk '/Overall exposure level/{print $(NF-2)}')
echo "exposure (systemd-analyze security --offline=true): $exposure"
awk -v e="$exposure" 'BEGIN{exit !(e != "" && e <= 1.0)}' || fail "exposure $exposure is above 1.0"
in_c getent group tacore-clients || fail "make install did not create the group tacore-clients"

step "1. systemctl start tacore"
t0=$(now)
in_c systemctl start tacore || fail "systemctl start"
start_s=$(since "$t0")
[ "$(in_c systemctl show -P SubState tacore)" = running ] || fail "not active (running)"
in_c systemctl status --no-pager --lines=0 tacore | head -4
echo "systemctl start returned after READY in $start_s s"

TACORECTL="/opt/tacore/bin/tacorectl --config /etc/tacore/tacore.toml"
step "2. tacorectl status"
in_c $TACORECTL status || fail "tacorectl status"
in_c $TACORECTL health || fail "tacorectl health"
in_c $TACORECTL call ta sma '{"prices": [1, 2, 3, 4], "window": 2}' || fail "tacorectl call"

step "2b. clients of other users: [broker] group = \"tacore-clients\""
in_c stat -c '%a %G %n' /run/tacore /run/tacore/frontend.sock /run/tacore/control.sock \
  /run/tacore/backend.sock
[ "$(in_c stat -c '%a %G' /run/tacore)" = "750 tacore-clients" ] || fail "runtime dir not 0750 tacore-clients"
[ "$(in_c stat -c '%a %G' /run/tacore/frontend.sock)" = "660 tacore-clients" ] || fail "frontend.sock not 0660 tacore-clients"
[ "$(in_c stat -c '%a' /run/tacore/control.sock)" = 600 ] || fail "control.sock not 0600"
[ "$(in_c stat -c '%a' /run/tacore/backend.sock)" = 600 ] || fail "backend.sock not 0600"
in_c useradd --create-home --groups tacore-clients alice
in_c useradd --create-home bob
in_c useradd --create-home carol
as() { local who=$1; shift; in_c runuser -u "$who" -- "$@"; }  # a fresh login's groups
expect_denied() {  # expect_denied WHAT TEXT CMD...: exit 4 and TEXT on stderr
  local what=$1 text=$2 rc=0 out; shift 2
  out=$("$@" 2>&1 >/dev/null) || rc=$?
  echo "$what: exit $rc: $out"
  [ "$rc" = 4 ] || fail "$what: exit $rc, not 4"
  case "$out" in *"$text"*) ;; *) fail "$what: the message does not say: $text" ;; esac
}
out=$(as alice $TACORECTL call echo hello '{"from": "alice"}') || fail "alice: tacorectl call"
echo "alice (tacore-clients), tacorectl call echo: $out"
[ "$out" = '{"from": "alice"}' ] || fail "alice: unexpected reply $out"
out=$(as alice /opt/tacore/bin/python -c 'from tacore.client import Client
with Client("ipc:///run/tacore/frontend.sock") as c: print(c.call("echo", "x", [1, 2], timeout=5))') ||
  fail "alice: the client library"
echo "alice, tacore.client: $out"
[ "$out" = "[1, 2]" ] || fail "alice: unexpected reply $out"
expect_denied "alice, tacorectl status" "permission denied: /run/tacore/control.sock (mode 0600" \
  as alice $TACORECTL status
expect_denied "bob (no group), tacorectl call echo" \
  "permission denied: /run/tacore/frontend.sock: its directory /run/tacore (mode 0750, group tacore-clients): user bob is not in group tacore-clients" \
  as bob $TACORECTL call echo hello '"x"'
expect_denied "bob, tacore.client" "usermod -aG tacore-clients bob" \
  as bob /opt/tacore/bin/python -c 'import sys
from tacore.client import Client, AccessDenied
try:
    Client("ipc:///run/tacore/frontend.sock").call("echo", "x", 1, timeout=30)
except AccessDenied as e:
    print(e.message, file=sys.stderr)
    sys.exit(4)'
in_c usermod -aG tacore-clients carol
expect_denied "carol, added to the group after her session started" \
  "user carol was added to group tacore-clients after this login session started; log in again" \
  in_c setpriv --reuid carol --regid carol --clear-groups -- $TACORECTL call echo hello '"x"'
out=$(as carol $TACORECTL call echo hello '"carol"') || fail "carol, after logging in again"
echo "carol, in a new session: $out"
in_c $TACORECTL status >/dev/null || fail "root: tacorectl status"
echo "root: tacorectl status still answers"

step "3. systemctl reload with a changed configuration"
in_c sed -i 's/^workers = 2$/workers = 3/' /etc/tacore/tacore.toml
in_c systemctl reload tacore || fail "systemctl reload"
for _ in $(seq 1 100); do
  n=$(in_c $TACORECTL status --json | "$PYTHON" -c \
      'import json,sys; print(sum(w["state"]=="READY" for w in json.load(sys.stdin)["services"]["echo"]["workers"]))')
  [ "$n" = 3 ] && break; sleep 0.1
done
[ "$n" = 3 ] || fail "reload did not bring echo to 3 workers"
echo "echo has 3 READY workers after reload"

step "4. watchdog: freeze the daemon"
old_pid=$(in_c systemctl show -P MainPID tacore)
restarts=$(in_c systemctl show -P NRestarts tacore)
t0=$(now)
in_c kill -STOP "$old_pid"
for _ in $(seq 1 300); do
  pid=$(in_c systemctl show -P MainPID tacore)
  sub=$(in_c systemctl show -P SubState tacore)
  [ "$pid" != "$old_pid" ] && [ "$pid" != 0 ] && [ "$sub" = running ] && break
  sleep 0.1
done
[ "$pid" != "$old_pid" ] && [ "$sub" = running ] || fail "the watchdog did not restart tacore"
watchdog_s=$(since "$t0")
[ "$(in_c systemctl show -P NRestarts tacore)" -gt "$restarts" ] || fail "NRestarts did not grow"
in_c journalctl --no-pager -u tacore -g "Watchdog timeout" -q | tail -1
echo "frozen at pid $old_pid; new daemon pid $pid running after $watchdog_s s (WatchdogSec=3)"

step "5. systemctl stop leaves nothing behind"
cgroup=$(in_c systemctl show -P ControlGroup tacore)
in_c systemctl stop tacore || fail "systemctl stop"
[ "$(in_c systemctl show -P ActiveState tacore)" = inactive ] || fail "not inactive"
left=$(in_c sh -c "ps -eo pid,user,args | grep -E '[t]acored|[m]ultiprocessing' || true")
[ -z "$left" ] || fail "processes left: $left"
echo "inactive; no tacored or worker process left (cgroup was $cgroup)"
in_c journalctl --no-pager -o cat -u tacore -n 3 | tail -2

step "6. the tcp drop-in: [http] listen and /healthz"
in_c cp /src/systemd/tcp.conf /etc/systemd/system/tacore.service.d/tcp.conf
in_c sed -i 's/^# listen = "127.0.0.1:9464"/listen = "127.0.0.1:9464"/' /etc/tacore/tacore.toml
in_c systemctl daemon-reload
in_c systemctl start tacore || fail "start with the tcp drop-in"
in_c python3 -c 'import urllib.request as u; r = u.urlopen("http://127.0.0.1:9464/healthz", timeout=5); print(r.status, r.read().decode().strip())' \
  || fail "/healthz over tcp"
in_c systemctl stop tacore

step "7. [control] group = \"tacore-admins\" with its drop-in"
in_c rm /etc/systemd/system/tacore.service.d/tcp.conf  # measured on its own below
in_c sed -i 's/^listen = "127.0.0.1:9464"/# listen = "127.0.0.1:9464"/' /etc/tacore/tacore.toml
in_c groupadd --system tacore-admins
in_c useradd --create-home --groups tacore-admins dave
in_c sh -c 'printf "[Service]\nSupplementaryGroups=tacore-admins\nPrivateUsers=no\nSystemCallFilter=@chown\n" \
  > /etc/systemd/system/tacore.service.d/control-group.conf'
in_c sed -i 's/^# group = "tacore-admins"/group = "tacore-admins"/' /etc/tacore/tacore.toml
in_c systemctl daemon-reload
in_c systemctl start tacore || fail "start with [control] group"
in_c stat -c '%a %G %n' /run/tacore /run/tacore/frontend.sock /run/tacore/control.sock
[ "$(in_c stat -c '%a' /run/tacore)" = 711 ] || fail "runtime dir not 0711 with two groups"
[ "$(in_c stat -c '%a %G' /run/tacore/control.sock)" = "660 tacore-admins" ] || fail "control.sock not 0660 tacore-admins"
[ "$(in_c stat -c '%a %G' /run/tacore/frontend.sock)" = "660 tacore-clients" ] || fail "frontend.sock not 0660 tacore-clients"
as dave $TACORECTL status >/dev/null || fail "dave (tacore-admins): tacorectl status"
echo "dave (tacore-admins): tacorectl status answers"
out=$(as alice $TACORECTL call echo hello '"alice"') || fail "alice: call with two groups"
echo "alice (tacore-clients): tacorectl call echo: $out"
expect_denied "bob (no group), with two groups" \
  "permission denied: /run/tacore/frontend.sock (mode 0660, group tacore-clients): user bob is not in group tacore-clients" \
  as bob $TACORECTL call echo hello '"x"'
in_c systemctl stop tacore
control_exposure=$(in_c systemd-analyze security tacore 2>/dev/null | awk '/Overall exposure level/{print $(NF-2)}' || true)
echo "exposure with the control-group drop-in: ${control_exposure:-?}"

printf '\nsystemd test passed: exposure %s, start->READY %s s, freeze->restart %s s\n' \
  "$exposure" "$start_s" "$watchdog_s"
