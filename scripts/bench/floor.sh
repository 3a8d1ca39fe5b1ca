#!/bin/sh
# The floor of `make bench BENCH=critical-path`: the critical path chained by hand on the
# source, no Ansible - the same CRIU dump and restore argv the fused module runs, an rsync
# of the images and the working directory, all over one SSH master connection opened
# before the freeze (and, with a page server, the page server started before it too).
#
#   floor.sh DEST KEY KNOWN_HOSTS CIPHER CP_DIR -- PATHS... -- DUMP ARGV... -- RESTORE ARGV...
#            [-- PAGE-SERVER ARGV...]
#
# Prints one JSON line: the wall-clock stamps (seconds since the epoch, this host's clock)
# of the dump's start and end, the transfer's end and the restore's end.
set -eu

dest=$1 key=$2 known_hosts=$3 cipher=$4 cp_dir=$5
shift 5
[ "$1" = "--" ] || { echo "floor.sh: expected -- after CP_DIR" >&2; exit 2; }
shift

# split the rest at "--" into the transfer's paths, the dump, the restore and the page server
part=paths paths="" dump="" restore="" page_server=""
for arg in "$@"; do
  if [ "$arg" = "--" ]; then
    case $part in paths) part=dump ;; dump) part=restore ;; restore) part=page_server ;; esac
    continue
  fi
  quoted=$(printf "'%s'" "$(printf %s "$arg" | sed "s/'/'\\\\''/g")")
  case $part in
    paths) paths="$paths $quoted" ;;
    dump) dump="$dump $quoted" ;;
    restore) restore="$restore $quoted" ;;
    page_server) page_server="$page_server $quoted" ;;
  esac
done

control="$cp_dir/master"
ssh_opts="-o BatchMode=yes -o Compression=no -i $key -o IdentitiesOnly=yes \
-o UserKnownHostsFile=$known_hosts -o StrictHostKeyChecking=yes -c $cipher -o ControlPath=$control"
now() { date +%s.%N; }

# before the freeze: the master connection, the destination's folders, the page server
mkdir -p "$cp_dir"
# shellcheck disable=SC2086
ssh $ssh_opts -o ControlMaster=yes -o ControlPersist=yes -N -f "root@$dest" </dev/null >/dev/null 2>&1
trap 'ssh $ssh_opts -O exit "root@$dest" >/dev/null 2>&1 || true' EXIT
if [ -n "$page_server" ]; then
  # shellcheck disable=SC2086
  eval "ssh $ssh_opts root@$dest -- $page_server" </dev/null
fi

dump_start=$(now)
eval "$dump"
dump_end=$(now)
# shellcheck disable=SC2086
eval "rsync -a --whole-file --relative -e 'ssh $ssh_opts' $paths root@$dest:/"
transfer_end=$(now)
# shellcheck disable=SC2086
eval "ssh $ssh_opts root@$dest -- $restore" </dev/null
restore_end=$(now)

printf '{"dump_start": %s, "dump_end": %s, "transfer_end": %s, "restore_end": %s}\n' \
  "$dump_start" "$dump_end" "$transfer_end" "$restore_end"
