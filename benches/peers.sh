#!/usr/bin/env bash
# Side-by-side benchmark of issue 11: hexzd against the reference `hexz serve`, nginx on the
# raw image, `qemu-nbd -r` and `nbdkit file`, on one mixed disk image, in one run.
#
#   benches/peers.sh                 # full run (about 15 minutes with the defaults)
#   HEXZD_PEERS_QUICK=1 benches/peers.sh   # smoke test: 64 MiB, 2 s per figure, one round
#
# What it does: makes (or reuses) a mixed image in the cache directory (zeros, text, random,
# 32-byte records, repeats of earlier data); installs the reference CLI there with cargo;
# packs the image with `hexz pack` (LZ4, its content-defined blocks) and with `hexzd pack`;
# starts every server on a free loopback port; then, round by round, drives each in turn
# (interleaved, so a slow spell of a shared machine hits them all) with
#   - wrk -t1 -c8: random single ranges of 1 MiB and of 4 KiB over the whole image,
#     4 KiB aligned (benches/peers-ranges.lua), after a warm-up;
#   - nbdcopy to null: (best of 3);
#   - fio --ioengine=nbd: 4 KiB random reads at queue depth 1 and 32;
# and, for TLS (issue 13), the same hexzd process over HTTPS (1 MiB ranges, beside nginx
# serving the raw image over HTTPS with the same certificate) and nbdcopy over NBD STARTTLS
# (beside its own plaintext figure and qemu-nbd with tls-creds); and reads each server's CPU
# time (utime + stime of its processes, /proc/PID/stat) around every figure. It prints
# throughput, CPU per request and the ratios of issue 11's and issue 13's targets.
#
# Knobs (environment): HEXZD_PEERS_DIR (cache directory; default ~/.cache/hexzd-peers),
# HEXZD_PEERS_MB (image size in MiB, default 512), HEXZD_PEERS_SECS (seconds per figure,
# default 10), HEXZD_PEERS_WARM (warm-up seconds, default 3), HEXZD_PEERS_ROUNDS (default 3),
# HEXZD_PEERS_HEXZD (hexzd binary; default: cargo build --release of this checkout),
# HEXZD_PEERS_QUICK=1 (64 MiB, 2 s, 1 s warm-up, 1 round). As root it installs what it
# needs with apt-get (nginx wrk fio nbdkit qemu-utils libnbd-bin python3 curl); otherwise it
# says what is missing.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
if [[ ${HEXZD_PEERS_QUICK:-0} == 1 ]]; then
    : "${HEXZD_PEERS_MB:=64}" "${HEXZD_PEERS_SECS:=2}" "${HEXZD_PEERS_WARM:=1}" "${HEXZD_PEERS_ROUNDS:=1}"
fi
MB=${HEXZD_PEERS_MB:-512}
SECS=${HEXZD_PEERS_SECS:-10}
WARM=${HEXZD_PEERS_WARM:-3}
ROUNDS=${HEXZD_PEERS_ROUNDS:-3}
DIR=${HEXZD_PEERS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/hexzd-peers}
HEXZ_VERSION=0.8.2
mkdir -p "$DIR"
RUN=$(mktemp -d "${TMPDIR:-/tmp}/hexzd-peers.XXXXXX")
RESULTS=$RUN/results.tsv
: >"$RESULTS"
PIDS=()

say() { printf '%s\n' "$*" >&2; }
die() { say "peers.sh: $*"; exit 1; }

cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$RUN"
}
trap cleanup EXIT

# --- tools -------------------------------------------------------------------------------
need=(nginx wrk fio nbdkit qemu-nbd nbdcopy nbdinfo python3 curl openssl)
missing=()
for t in "${need[@]}"; do command -v "$t" >/dev/null 2>&1 || missing+=("$t"); done
if ((${#missing[@]})); then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        say "installing: nginx wrk fio nbdkit qemu-utils libnbd-bin python3 curl openssl"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx wrk fio nbdkit qemu-utils \
            libnbd-bin python3 curl openssl >/dev/null
    else
        die "missing tools: ${missing[*]} (Debian: apt-get install nginx wrk fio nbdkit qemu-utils libnbd-bin python3 curl)"
    fi
fi
# Debian 12's fio (3.33) has the libnbd engine; say so plainly if this one does not.
fio --enghelp 2>/dev/null | grep -qw nbd || die "this fio has no nbd engine (fio --enghelp); Debian's fio >= 3.21 has it"
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

# --- hexzd and the reference CLI ----------------------------------------------------------
if [[ -n ${HEXZD_PEERS_HEXZD:-} ]]; then
    HEXZD=$HEXZD_PEERS_HEXZD
else
    say "building hexzd (release)"
    (cd "$repo" && cargo build --release --quiet --bin hexzd)
    HEXZD=$repo/target/release/hexzd
fi
HEXZ=$DIR/hexz-$HEXZ_VERSION/bin/hexz
if [[ ! -x $HEXZ ]]; then
    say "installing the reference hexz-cli $HEXZ_VERSION into $DIR (a few minutes, once)"
    cargo install hexz-cli --version "$HEXZ_VERSION" --locked --no-default-features \
        --features server,compression-zstd,encryption,signing --root "$DIR/hexz-$HEXZ_VERSION" \
        --quiet
fi

# --- image and packs ----------------------------------------------------------------------
IMG=$DIR/mixed-$MB.img
if [[ ! -s $IMG ]]; then
    say "generating a $MB MiB mixed image: $IMG"
    python3 - "$IMG.tmp" "$MB" 1 <<'EOF'
# Runs of 256 KiB - 2 MiB: 30 % text (a skewed vocabulary), 14 % random, 22 % zeros,
# 10 % repeats of earlier runs, 16 % 32-byte records, 8 % half text half random.
import random, struct, sys
path, mib, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
letters = "etaoinshrdlucmfwypvbgkjqxz"
words = ["".join(letters[min(rng.randrange(26), rng.randrange(26))] for _ in range(rng.randint(1, 12)))
         for _ in range(4096)]
weights = [1.0 / (i + 1) for i in range(len(words))]
seps = [" "] * 13 + ["\n", ",", "."]
UNIT = 256 << 10
def text(n):
    out, size = [], 0
    while size < n:
        s = "".join(w + c for w, c in zip(rng.choices(words, weights, k=8192), rng.choices(seps, k=8192)))
        out.append(s); size += len(s)
    return "".join(out).encode()[:n]
rid = 0
def records(n):
    global rid
    ts, parts = 1_700_000_000_000 + rid * 7, []
    for _ in range(n // 32):
        ts += rng.randrange(16)
        parts.append(struct.pack("<QIB3xQ8x", rid, rng.randrange(1000), rng.randrange(4), ts))
        rid += 1
    return b"".join(parts)
history = []
with open(path, "wb") as f:
    left = mib << 20
    while left > 0:
        run = min(left, UNIT * rng.randint(1, 8))
        r = rng.randrange(100)
        if r < 30: data = text(run)
        elif r < 44: data = rng.randbytes(run)
        elif r < 66: data = bytes(run)
        elif r < 76 and history: data = (rng.choice(history) * 8)[:run]
        elif r < 92: data = records(run)
        else: data = text(run // 2) + rng.randbytes(run - run // 2)
        if r >= 76 or r < 44:
            if len(history) < 64: history.append(data[:UNIT])
            else: history[rng.randrange(64)] = data[:UNIT]
        f.write(data); left -= run
EOF
    mv "$IMG.tmp" "$IMG"
fi
REF=$DIR/mixed-$MB.hexz-lz4.hxz
OWN=$DIR/mixed-$MB.hexzd-lz4.hxz
[[ -s $REF ]] || { say "packing with hexz pack (LZ4, CDC)"; "$HEXZ" pack "$IMG" "$REF" --compression lz4 -s >/dev/null; }
[[ -s $OWN ]] || { say "packing with hexzd pack (LZ4)"; "$HEXZD" pack "$IMG" "$OWN" >/dev/null 2>&1; }
SIZE=$(stat -c %s "$IMG")

# --- servers ------------------------------------------------------------------------------
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# wait_for CMD...: retries CMD for up to 60 s (a benchmark script, not a test: polling is fine).
wait_for() {
    local i
    for ((i = 0; i < 600; i++)); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
    return 1
}

declare -A HTTP_URL NBD_URL PID_OF
SERVERS_HTTP=() SERVERS_NBD=() SERVERS_HTTPS=() SERVERS_NBDS=()

# TLS (issue 13): one test CA and a certificate for localhost/127.0.0.1, used by every TLS
# server; clients get the CA in a directory of its own (libnbd's tls-certificates=).
TLS=$RUN/tls TLS_CLIENT=$RUN/tls-client
mkdir -p "$TLS" "$TLS_CLIENT"
(
    cd "$TLS"
    ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
    openssl req -x509 "${ec[@]}" -keyout ca-key.pem -out ca-cert.pem -days 2 -subj /CN=peers-ca 2>/dev/null
    openssl req "${ec[@]}" -keyout server-key.pem -out server.csr -subj /CN=localhost 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >server.ext
    openssl x509 -req -in server.csr -CA ca-cert.pem -CAkey ca-key.pem -CAcreateserial \
        -out server-cert.pem -days 2 -extfile server.ext 2>/dev/null
    chmod 600 server-key.pem
)
cp "$TLS/ca-cert.pem" "$TLS_CLIENT/"

start_hexzd() { # NAME ARCHIVE [serve options...]
    local name=$1 archive=$2 hp np
    shift 2
    hp=$(free_port) np=$(free_port)
    "$HEXZD" serve --http "127.0.0.1:$hp" --nbd "127.0.0.1:$np" "$@" "$archive" \
        >"$RUN/$name.log" 2>&1 &
    PIDS+=($!) PID_OF[$name]=$!
    HTTP_URL[$name]=http://127.0.0.1:$hp/disk NBD_URL[$name]=nbd://127.0.0.1:$np
    wait_for curl -fs -r 0-0 -o /dev/null "${HTTP_URL[$name]}" || die "$name did not start: $(tail -3 "$RUN/$name.log")"
    SERVERS_HTTP+=("$name") SERVERS_NBD+=("$name")
}

# The main hexzd also listens for HTTPS and offers STARTTLS: its TLS figures come from the
# same process as its plaintext ones.
tls_port=$(free_port)
start_hexzd hexzd "$REF" --https "127.0.0.1:$tls_port" --tls-certificates "$TLS" --nbd-tls on
HTTP_URL[hexzd-tls]=https://localhost:$tls_port/disk PID_OF[hexzd-tls]=${PID_OF[hexzd]}
NBD_URL[hexzd-tls]="nbds://localhost:${NBD_URL[hexzd]##*:}/?tls-certificates=$TLS_CLIENT"
wait_for curl -fs --cacert "$TLS/ca-cert.pem" -r 0-0 -o /dev/null "${HTTP_URL[hexzd-tls]}" ||
    die "hexzd HTTPS did not answer: $(tail -3 "$RUN/hexzd.log")"
SERVERS_HTTPS+=(hexzd-tls) SERVERS_NBDS+=(hexzd-tls)
start_hexzd hexzd-cache0 "$REF" --cache 0
start_hexzd hexzd-ownpack "$OWN"
SERVERS_NBD=(hexzd hexzd-cache0)

p=$(free_port)
"$HEXZ" serve "$REF" --port "$p" --bind 127.0.0.1 >"$RUN/hexz.log" 2>&1 &
PIDS+=($!) PID_OF[hexz-serve]=$!
HTTP_URL[hexz-serve]=http://127.0.0.1:$p/disk
wait_for curl -fs -r 0-0 -o /dev/null "${HTTP_URL[hexz-serve]}" || die "hexz serve did not start"
SERVERS_HTTP+=(hexz-serve)

p=$(free_port) ps=$(free_port)
mkdir -p "$RUN/nginx"
# As root, nginx's workers would switch to www-data, who cannot read an image in root's home.
nginx_user=""
[[ $(id -u) == 0 ]] && nginx_user="user root;"
cat >"$RUN/nginx/nginx.conf" <<EOF
$nginx_user
daemon off;
worker_processes auto;
pid $RUN/nginx/nginx.pid;
error_log $RUN/nginx/error.log;
events { worker_connections 1024; }
http {
    sendfile on;
    tcp_nopush on;
    access_log off;
    client_body_temp_path $RUN/nginx;
    proxy_temp_path $RUN/nginx;
    fastcgi_temp_path $RUN/nginx;
    uwsgi_temp_path $RUN/nginx;
    scgi_temp_path $RUN/nginx;
    server {
        listen 127.0.0.1:$p;
        location = /disk { alias $IMG; default_type application/octet-stream; }
    }
    server {
        listen 127.0.0.1:$ps ssl;
        ssl_certificate $TLS/server-cert.pem;
        ssl_certificate_key $TLS/server-key.pem;
        location = /disk { alias $IMG; default_type application/octet-stream; }
    }
}
EOF
"$NGINX" -p "$RUN/nginx" -c "$RUN/nginx/nginx.conf" >"$RUN/nginx.log" 2>&1 &
PIDS+=($!) PID_OF[nginx]=$!
HTTP_URL[nginx]=http://127.0.0.1:$p/disk
wait_for curl -fs -r 0-0 -o /dev/null "${HTTP_URL[nginx]}" || die "nginx did not start: $(tail -3 "$RUN/nginx/error.log")"
SERVERS_HTTP+=(nginx)
HTTP_URL[nginx-tls]=https://localhost:$ps/disk PID_OF[nginx-tls]=${PID_OF[nginx]}
wait_for curl -fs --cacert "$TLS/ca-cert.pem" -r 0-0 -o /dev/null "${HTTP_URL[nginx-tls]}" ||
    die "nginx HTTPS did not start: $(tail -3 "$RUN/nginx/error.log")"
SERVERS_HTTPS+=(nginx-tls)

p=$(free_port)
qemu-nbd -r -f raw -t -e 16 -b 127.0.0.1 -p "$p" -x '' "$IMG" >"$RUN/qemu-nbd.log" 2>&1 &
PIDS+=($!) PID_OF[qemu-nbd]=$!
NBD_URL[qemu-nbd]=nbd://127.0.0.1:$p
wait_for nbdinfo --size "${NBD_URL[qemu-nbd]}" || die "qemu-nbd did not start"
SERVERS_NBD+=(qemu-nbd)

p=$(free_port)
qemu-nbd -r -f raw -t -e 16 -b 127.0.0.1 -p "$p" -x '' \
    --object "tls-creds-x509,id=tls0,dir=$TLS,endpoint=server,verify-peer=off" --tls-creds tls0 "$IMG" \
    >"$RUN/qemu-nbd-tls.log" 2>&1 &
PIDS+=($!) PID_OF[qemu-nbd-tls]=$!
NBD_URL[qemu-nbd-tls]="nbds://localhost:$p/?tls-certificates=$TLS_CLIENT"
wait_for nbdinfo --size "${NBD_URL[qemu-nbd-tls]}" || die "qemu-nbd (TLS) did not start"
SERVERS_NBDS+=(qemu-nbd-tls)

p=$(free_port)
nbdkit -f -r -i 127.0.0.1 -p "$p" file "$IMG" >"$RUN/nbdkit.log" 2>&1 &
PIDS+=($!) PID_OF[nbdkit]=$!
NBD_URL[nbdkit]=nbd://127.0.0.1:$p
wait_for nbdinfo --size "${NBD_URL[nbdkit]}" || die "nbdkit did not start"
SERVERS_NBD+=(nbdkit)

# CPU ticks (utime + stime) of a process and its children (nginx workers).
ticks() {
    local pid=$1 total=0 c t
    for c in $pid $(pgrep -P "$pid" || true); do
        t=$(awk '{print $14 + $15}' "/proc/$c/stat" 2>/dev/null || echo 0)
        total=$((total + t))
    done
    echo "$total"
}
HZ=$(getconf CLK_TCK)

# record SERVER WORKLOAD ROUND VALUE UNIT OPS CPU_TICKS [P99_US]
record() { printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" "${9:-}" >>"$RESULTS"; }

# --- workloads ----------------------------------------------------------------------------
LUA=$here/peers-ranges.lua
# cache_counts SERVER: "hits misses" of a hexzd's block cache from /metrics (empty otherwise).
cache_counts() {
    [[ $1 == hexzd* ]] || return 0
    curl -fsk "${HTTP_URL[$1]%/disk}/metrics" |
        awk '/^hexzd_store_cache_hits_total/{h=$2} /^hexzd_store_cache_misses_total/{m=$2} END{print h, m}'
}

run_wrk() { # SERVER LEN NAME ROUND (wrk speaks https:// URLs without checking certificates)
    local s=$1 len=$2 name=$3 round=$4 url=${HTTP_URL[$1]} t0 t1 out c0 c1
    # The warm-up draws other ranges than the measured run (its own seed), so a cache is
    # warmed by the workload, not by the very requests it is then timed on.
    HEXZD_PEERS_SIZE=$SIZE HEXZD_PEERS_LEN=$len HEXZD_PEERS_SEED=$((1000 + round)) \
        wrk -t1 -c8 -d"${WARM}s" -s "$LUA" "$url" >/dev/null
    c0=$(cache_counts "$s")
    t0=$(ticks "${PID_OF[$s]}")
    out=$(HEXZD_PEERS_SIZE=$SIZE HEXZD_PEERS_LEN=$len HEXZD_PEERS_SEED=$round wrk -t1 -c8 -d"${SECS}s" --latency -s "$LUA" "$url")
    t1=$(ticks "${PID_OF[$s]}")
    c1=$(cache_counts "$s")
    if [[ -n $c0 && -n $c1 ]]; then
        printf '%s\t%s\t%s %s\n' "$s" "$name" "$c0" "$c1" >>"$RUN/cache.tsv"
    fi
    if grep -q "Non-2xx" <<<"$out"; then say "$s: non-2xx answers in $name"; fi
    local reqs rps p99
    reqs=$(awk '/requests in/{print $1}' <<<"$out")
    rps=$(awk '/Requests\/sec/{print $2}' <<<"$out")
    p99=$(awk '$1=="99%"{print $2}' <<<"$out")
    record "$s" "$name" "$round" "$rps" req/s "$reqs" $((t1 - t0)) "$p99"
}

run_nbdcopy() { # SERVER ROUND [NAME]
    local s=$1 round=$2 name=${3:-nbdcopy} best=0 i t0 t1 a b
    t0=$(ticks "${PID_OF[$s]}")
    for i in 1 2 3; do
        a=$(date +%s.%N)
        nbdcopy "${NBD_URL[$s]}" null: || die "nbdcopy from $s failed"
        b=$(date +%s.%N)
        best=$(python3 -c "print(max($best, $SIZE / ($b - $a) / 1e6))")
    done
    t1=$(ticks "${PID_OF[$s]}")
    record "$s" "$name" "$round" "$best" MB/s 3 $((t1 - t0))
}

run_fio() { # SERVER DEPTH ROUND
    local s=$1 depth=$2 round=$3 t0 t1 json
    t0=$(ticks "${PID_OF[$s]}")
    json=$(fio --name=peers --ioengine=nbd --uri="${NBD_URL[$s]}" --rw=randread --bs=4k \
        --iodepth="$depth" --runtime="$SECS" --ramp_time="$WARM" --time_based \
        --randseed="$round" --output-format=json 2>"$RUN/fio.err") ||
        die "fio against $s failed: $(tail -3 "$RUN/fio.err")"
    t1=$(ticks "${PID_OF[$s]}")
    python3 -c '
import json, sys
text = sys.stdin.read()  # fio may print "connected to NBD server" first
j = json.loads(text[text.index("{"):])["jobs"][0]["read"]
p99 = j["clat_ns"]["percentile"].get("99.000000", 0) / 1000
print(j["iops"], j["total_ios"], p99)' <<<"$json" | {
        read -r iops ios p99
        record "$s" "fio-qd$depth" "$round" "$iops" IOPS "$ios" $((t1 - t0)) "${p99}us"
    }
}

say "image $IMG ($MB MiB); $ROUNDS rounds of $SECS s per figure after ${WARM} s warm-ups"
say "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for ((round = 1; round <= ROUNDS; round++)); do
    say "round $round/$ROUNDS"
    for s in "${SERVERS_HTTP[@]}"; do run_wrk "$s" 1048576 http-1MiB "$round"; done
    for s in "${SERVERS_HTTPS[@]}"; do run_wrk "$s" 1048576 https-1MiB "$round"; done
    for s in "${SERVERS_HTTP[@]}"; do run_wrk "$s" 4096 http-4KiB "$round"; done
    for s in "${SERVERS_NBD[@]}"; do run_nbdcopy "$s" "$round"; done
    for s in "${SERVERS_NBDS[@]}"; do run_nbdcopy "$s" "$round" nbdcopy-tls; done
    for s in "${SERVERS_NBD[@]}"; do run_fio "$s" 1 "$round"; done
    for s in "${SERVERS_NBD[@]}"; do run_fio "$s" 32 "$round"; done
done
say "load after: $(cut -d' ' -f1-3 /proc/loadavg)"

# --- table --------------------------------------------------------------------------------
touch "$RUN/cache.tsv"
python3 - "$RESULTS" "$HZ" "$MB" "$RUN/cache.tsv" <<'EOF'
import sys, statistics
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
hz, mb = float(sys.argv[2]), sys.argv[3]
data = {}
for server, work, rnd, value, unit, ops, ticks, p99 in rows:
    data.setdefault((work, server), []).append((float(value), unit, float(ops), float(ticks), p99))
works = ["http-1MiB", "http-4KiB", "https-1MiB", "nbdcopy", "nbdcopy-tls", "fio-qd1", "fio-qd32"]
def best(work, server):
    v = data.get((work, server))
    return max(x[0] for x in v) if v else None
def median(work, server):
    v = data.get((work, server))
    return statistics.median(x[0] for x in v) if v else None
def cpu_per_op(work, server):
    v = data.get((work, server))
    if not v: return None
    ops = sum(x[2] for x in v)
    return sum(x[3] for x in v) / hz / ops * 1e6 if ops else None
print(f"\n== hexzd side by side ({mb} MiB mixed image; best / median of the rounds) ==")
print(f"{'workload':11} {'server':14} {'throughput':>22} {'CPU per op':>14} {'p99':>10}")
for w in works:
    for (work, server), v in sorted(data.items()):
        if work != w: continue
        unit = v[0][1]
        cpu = cpu_per_op(w, server)
        if w.startswith("nbdcopy"):
            gb = len(v) * 3 * float(mb) * (1 << 20) / 1e9  # three copies per round
            cpu_s = f"{sum(x[3] for x in v) / hz / gb:.2f} s/GB"
        else:
            cpu_s = f"{cpu:.1f} us" if cpu is not None else "-"
        p99 = sorted(x[4] for x in v)[len(v) // 2] if v[0][4] else ""
        print(f"{w:11} {server:14} {best(w, server):>12.1f} / {median(w, server):>7.1f} {unit:7} {cpu_s:>12} {p99:>10}")
def ratio(w, a, b):
    x, y = best(w, a), best(w, b)
    return f"{x / y:.2f}" if x and y else "n/a"
print("\nratios (best of rounds; issue 11 targets in brackets):")
targets = [
    ("http-4KiB", "hexzd", "hexz-serve", ">= 2.0"),
    ("http-4KiB", "hexzd", "nginx", ">= 1.0"),
    ("http-1MiB", "hexzd", "nginx", ">= 1.0"),
    ("http-1MiB", "hexzd", "hexz-serve", ">= 1.25"),
    ("nbdcopy", "hexzd", "qemu-nbd", ">= 1.0"),
    ("fio-qd1", "hexzd", "qemu-nbd", ">= 1.0"),
    ("fio-qd32", "hexzd", "qemu-nbd", ">= 1.0"),
    ("fio-qd1", "hexzd", "nbdkit", "stretch >= 1.0"),
    ("fio-qd32", "hexzd", "nbdkit", "stretch >= 1.0"),
    ("https-1MiB", "hexzd-tls", "nginx-tls", ">= 1.0, issue 13"),
]
for w, a, b, t in targets:
    print(f"  {w:10} {a} / {b}: {ratio(w, a, b)}  [{t}]")
def p99_ms(w, server):
    v = [x[4] for x in data.get((w, server), []) if x[4]]
    if not v: return None
    ms = sorted(float(p[:-2]) / 1000 if p.endswith("us") else float(p[:-2]) if p.endswith("ms") else float(p[:-1]) * 1000 for p in v)
    return ms[len(ms) // 2]
for w in ["fio-qd1", "fio-qd32"]:
    a, b = p99_ms(w, "hexzd"), p99_ms(w, "qemu-nbd")
    if a and b:
        print(f"  {w:10} p99 hexzd / qemu-nbd: {a:.2f} / {b:.2f} ms = {a / b:.2f}  [<= 1.0]")
def cross(wa, a, wb, b, what):
    x, y = best(wa, a), best(wb, b)
    if x and y:
        print(f"  {what}: {x / y:.2f}")
cross("https-1MiB", "hexzd-tls", "http-1MiB", "hexzd", "https-1MiB / http-1MiB, hexzd (cost of TLS)")
cross("https-1MiB", "nginx-tls", "http-1MiB", "nginx", "https-1MiB / http-1MiB, nginx (cost of TLS)")
cross("nbdcopy-tls", "hexzd-tls", "nbdcopy", "hexzd", "nbdcopy over TLS / plaintext, hexzd")
cross("nbdcopy-tls", "hexzd-tls", "nbdcopy-tls", "qemu-nbd-tls", "nbdcopy over TLS, hexzd / qemu-nbd")
c0, ref = cpu_per_op("http-4KiB", "hexzd-cache0"), cpu_per_op("http-4KiB", "hexz-serve")
if c0 and ref:
    print(f"  http-4KiB CPU per request, hexzd --cache 0 / hexz serve: {c0:.1f} / {ref:.1f} us = {c0 / ref:.2f}  [<= 0.5]")
hits = {}
for line in open(sys.argv[4]):
    server, work, counts = line.rstrip("\n").split("\t")
    h0, m0, h1, m1 = (float(x) for x in counts.split())
    t = hits.setdefault((work, server), [0.0, 0.0])
    t[0] += h1 - h0
    t[1] += m1 - m0
if hits:
    print("\nhexzd block cache during the timed runs (/metrics):")
    for (work, server), (h, m) in sorted(hits.items()):
        if h + m:
            print(f"  {work:10} {server:14} {100 * h / (h + m):5.1f} % of {int(h + m)} lookups were hits")
EOF
say "raw results: kept in $DIR/peers-last.tsv"
cp "$RESULTS" "$DIR/peers-last.tsv"
