#!/usr/bin/env bash
# Removes what killed Linen test runs left on this machine, and only that.
#
# Every host-wide name a test creates is `lnt<pid>-...` (testkit::PREFIX; <pid> is the test
# process): temp dirs $TMPDIR/lnt<pid>-*, network namespaces lnt<pid>-*, labs lnt<pid>-*.
# A name whose process is gone is a leftover (nextest's timeout, Ctrl-C, a crash: Drop never
# ran). A live run's names, and anything not named so (a lab a user started), are never
# touched. In order: labs found in leftover directories are torn down by `linen-lab down`
# (their own namespaces and daemons, by the lab's own proof of ownership), then processes
# whose command line names a leftover, processes inside leftover namespaces, mounts, the
# namespaces, control groups, the directories.
#
# --check: exit 1 if anything was found (scripts/test.sh runs this after the tests: a run
# must leave nothing). --list: only print what would be removed.
set -euo pipefail
mode=sweep
case ${1:-} in
  --check) mode=check ;;
  --list) mode=list ;;
  "") ;;
  *) echo "usage: $0 [--check|--list]" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."
tmp=${TMPDIR:-/tmp}
found=0

# True if $1 contains a name `lnt<pid>-` whose process is gone; sets $owner.
leftover() {
  local rest=$1
  while [[ $rest =~ (^|[^a-z0-9])lnt([0-9]+)- ]]; do
    owner=${BASH_REMATCH[2]}
    [[ -d /proc/$owner ]] || return 0
    rest=${rest#*lnt"$owner"-}
  done
  return 1
}

report() {
  found=$((found + 1))
  echo "leftover: $*"
}

act() {
  [[ $mode == list ]] || "$@" || true
}

lab_bin="${LINEN_BIN_DIR:-$PWD/target/release}/linen-lab"

# 1. Labs in leftover directories: the lab's own teardown.
shopt -s nullglob
for d in "$tmp"/lnt[0-9]*-*/; do
  leftover "$(basename "$d")-" || continue
  while IFS= read -r state; do
    lab=$(dirname "$state")
    report "lab $(basename "$lab") in $lab"
    if [[ -x $lab_bin ]]; then
      act "$lab_bin" down --name "$(basename "$lab")" --dir "$lab" >/dev/null 2>&1
    fi
  done < <(find "$d" -maxdepth 3 -name state.json 2>/dev/null)
done

# 2. Processes whose command line names a leftover (daemons with their files in a leftover
#    directory, or started for a leftover namespace).
for p in /proc/[0-9]*; do
  pid=${p#/proc/}
  [[ $pid == "$$" ]] && continue
  cmdline=$(tr '\0' ' ' 2>/dev/null <"$p/cmdline") || continue
  [[ -n $cmdline ]] || continue
  if leftover "$cmdline"; then
    report "process $pid: ${cmdline:0:150}"
    act kill -9 "$pid"
  fi
done

# 3. Namespaces: what still runs inside, then the namespace.
while read -r ns _; do
  [[ -n $ns ]] && leftover "$ns-" || continue
  for pid in $(ip netns pids "$ns" 2>/dev/null); do
    report "process $pid in namespace $ns: $(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | cut -c1-150)"
    act kill -9 "$pid"
  done
  report "namespace $ns"
  act ip netns del "$ns"
done < <(ip netns list 2>/dev/null)

# 4. Mounts under a leftover name (a namespace's bind mount that ip netns del left, a tmpfs).
while read -r _ target _; do
  if leftover "$target"; then
    report "mount $target"
    act umount -l "$target"
  fi
done < <(tac /proc/mounts)

# 5. Control groups a container runtime made under a leftover name (a test's podman runs
#    with --cgroup-parent /lnt<pid>-...): the processes in them, then the groups, deepest
#    first, in every hierarchy.
while read -r _ mnt kind _; do
  [[ $kind == cgroup || $kind == cgroup2 ]] || continue
  for cg in "$mnt"/lnt[0-9]*-*/; do
    leftover "$(basename "$cg")-" || continue
    report "cgroup $cg"
    while IFS= read -r dir; do
      for pid in $(cat "$dir/cgroup.procs" 2>/dev/null); do act kill -9 "$pid"; done
      act rmdir "$dir"
    done < <(find "$cg" -depth -type d 2>/dev/null)
  done
done < /proc/mounts

# 6. Directories.
for d in "$tmp"/lnt[0-9]*-*; do
  leftover "$(basename "$d")-" || continue
  report "directory $d"
  act rm -rf "$d"
done

if ((found)); then
  case $mode in
    list) echo "$found leftovers (not removed: --list)" ;;
    sweep) echo "removed $found leftovers of earlier killed test runs" ;;
    check) echo "FAILED: the test run left $found things behind (removed now)" >&2; exit 1 ;;
  esac
fi
