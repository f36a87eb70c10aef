# Sourced by the benchmarks: a throwaway Debian docker-registry on a free loopback port.
# The caller calls `stop_registry` on exit.
# With WAN=RTT_MS[:MB_PER_S] in the environment (e.g. WAN=40:50), $reg is a shaping proxy in front
# of the registry (tests/src/bin/wan-proxy.rs): every round trip pays RTT_MS, every connection
# is capped at MB_PER_S each way. The registry's own address stays in $reg_direct.
pid="" wan_pid="" wan_proxy="$PWD/target/release/wan-proxy"
stop_registry() {
  local p
  for p in $wan_pid $pid; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  pid="" wan_pid=""
}
if [ -n "${WAN:-}" ]; then
  case $WAN in
    *[!0-9:.]* | "" | :* ) echo "WAN=$WAN: want RTT_MS[:MB_PER_S], e.g. 40:50" >&2; exit 2 ;;
  esac
  # With the whole workspace's features, as the test build has them: its dependencies are
  # compiled already. In ./target whatever CARGO_TARGET_DIR the caller set for its builds.
  CARGO_TARGET_DIR="$PWD/target" cargo build --release --locked -q --workspace --bin wan-proxy >&2
fi
start_registry() { # dir → starts it (access log in dir/access.log), sets $reg to host:port
  local dir=$1 port
  stop_registry
  rm -rf "$dir"
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  mkdir -p "$dir/data"
  printf 'version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:%s\n' "$dir/data" "$port" > "$dir/config.yml"
  docker-registry serve "$dir/config.yml" >"$dir/access.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  reg_direct="127.0.0.1:$port"
  reg=$reg_direct
  if [ -n "${WAN:-}" ]; then
    local rtt=${WAN%%:*} rate=""
    [ "$rtt" = "$WAN" ] || rate=${WAN#*:}
    # shellcheck disable=SC2086 # rate is one word or none
    "$wan_proxy" "$reg_direct" "$rtt" $rate >"$dir/wan.addr" &
    wan_pid=$!
    for _ in $(seq 100); do [ -s "$dir/wan.addr" ] && break; sleep 0.05; done
    reg=$(head -1 "$dir/wan.addr")
  fi
}
