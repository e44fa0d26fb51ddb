#!/usr/bin/env bash
# testssl.sh against a rampart lb HTTPS listener with the default TLS settings.
#
#   bash scripts/testssl-lb.sh [--rampart BIN] [--hsts]
#
# Starts `rampart lb --threads 1` on loopback with one listener `tls = { cert, key }` (an
# ECDSA P-256 certificate and an RSA 2048 twin for the same name, signed by a CA made here,
# chain included) in front of a small HTTP backend, runs testssl.sh (Debian package
# testssl.sh) with that CA added to its trust store, and writes the findings at MEDIUM or
# above (none expected) and the summary to bench/results/testssl-<timestamp>.md. Exits 1
# when there is a finding at MEDIUM or above. Every process started here is killed on exit.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$repo/target}
rampart_bin=${RAMPART_BIN:-$target_dir/release/rampart}
hsts=0
cmdline="bash scripts/testssl-lb.sh $*"
while [ $# -gt 0 ]; do
  case "$1" in
    --rampart) rampart_bin=$2; shift 2 ;;
    --hsts) hsts=1; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
bash "$repo/scripts/deps.sh"
command -v testssl >/dev/null || { echo "testssl is missing (apt-get install testssl.sh)" >&2; exit 1; }
[ -x "$rampart_bin" ] || { echo "$rampart_bin is missing (cargo build --release -p rampart)" >&2; exit 1; }

work=$(mktemp -d /tmp/rampart-testssl.XXXXXX)
pids=()
cleanup() {
  local rc=$? p
  for p in "${pids[@]}"; do kill -TERM -- "-$p" 2>/dev/null || true; done
  if [ $rc -le 1 ]; then rm -rf "$work"; else echo "logs kept in $work" >&2; fi
  exit $rc
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

cd "$work"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 365 \
  -subj "/CN=testssl root" -keyout ca.key -out ca.pem 2>/dev/null
# As a public CA's certificate: 90 days, a CRL distribution point (testssl.sh rates a
# certificate without CRL or OCSP URI HIGH; the certificate's matter, not the server's).
printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\ncrlDistributionPoints=URI:http://127.0.0.1/testssl-root.crl\n' >leaf.ext
for alg in ec rsa; do
  if [ $alg = ec ]; then newkey=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1); else newkey=(-newkey rsa:2048); fi
  openssl req -new -nodes "${newkey[@]}" -subj /CN=localhost -keyout $alg.key -out $alg.csr 2>/dev/null
  openssl x509 -req -in $alg.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 90 -sha256 \
    -extfile leaf.ext -out $alg.crt 2>/dev/null
  cat $alg.crt ca.pem >$alg-chain.pem
done

bport=$(free_port)
# The site behind: a page with the usual security headers (testssl.sh rates a response
# without any MEDIUM; they are the application's, not the balancer's).
cat >backend.py <<'PY'
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = b"ok\n"
        self.send_response(200)
        for k, v in (("Content-Type", "text/plain"), ("Content-Length", str(len(body))),
                     ("X-Content-Type-Options", "nosniff"), ("X-Frame-Options", "DENY"),
                     ("Content-Security-Policy", "default-src 'none'"),
                     ("Referrer-Policy", "no-referrer")):
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)
    do_HEAD = do_GET
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
setsid python3 backend.py "$bport" >backend.log 2>&1 </dev/null &
pids+=($!)
port=$(free_port)
extra=""
[ $hsts = 1 ] && extra='hsts = "365d"'
cat >lb.toml <<CONF
[[listener]]
name = "site"
address = "127.0.0.1:$port"
pool = "web"
[listener.tls]
cert = "$work/ec-chain.pem"
key = "$work/ec.key"
certificates = [{ cert = "$work/rsa-chain.pem", key = "$work/rsa.key" }]
$extra

[[pool]]
name = "web"
servers = [{ address = "127.0.0.1:$bport" }]
health_check = { kind = "none" }
CONF
setsid env RUST_LOG=warn "$rampart_bin" lb --config lb.toml --threads 1 >lb.log 2>&1 </dev/null &
pids+=($!)
for _ in $(seq 1 100); do
  curl -s --cacert ca.pem -m 1 -o /dev/null "https://localhost:$port/" && break
  sleep 0.1
done

testssl --quiet --color 0 --warnings off --add-ca "$work/ca.pem" --jsonfile "$work/out.json" \
  "https://localhost:$port/" >testssl.txt 2>&1 || true

ts=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$repo/bench/results"
out="$repo/bench/results/testssl-$ts.md"
rc=0
python3 - "$work/out.json" "$cmdline" "$(cd "$repo" && git rev-parse --short HEAD)" "$(dpkg-query -W -f='testssl.sh ${Version}' testssl.sh 2>/dev/null || echo testssl.sh)" >"$out" <<'PY' || rc=$?
import json, sys, collections
findings = json.load(open(sys.argv[1]))
order = ["CRITICAL", "HIGH", "MEDIUM", "LOW", "WARN", "INFO", "OK"]
count = collections.Counter(f.get("severity", "?") for f in findings)
bad = [f for f in findings if f.get("severity") in ("CRITICAL", "HIGH", "MEDIUM")]
low = [f for f in findings if f.get("severity") == "LOW"]
print(f"# testssl.sh against rampart lb (default TLS settings)\n")
print(f"Command: `{sys.argv[2]}` at {sys.argv[3]} ({sys.argv[4]}).\n")
print("Severity counts: " + ", ".join(f"{k} {count[k]}" for k in order if count[k]) + "\n")
print(f"Findings at MEDIUM or above: {len(bad)}\n")
for f in bad + low:
    print(f"- {f['severity']} `{f['id']}`: {f.get('finding', '')}")
keys = ["SSLv2", "SSLv3", "TLS1", "TLS1_1", "TLS1_2", "TLS1_3", "ALPN", "HSTS", "cert_chain_of_trust",
        "sessionresumption_ticket", "sessionresumption_ID", "PFS", "overall_grade", "final_score"]
by = {f["id"]: f for f in findings}
print("\n| check | severity | finding |\n|---|---|---|")
for k in keys:
    if k in by:
        print(f"| {k} | {by[k]['severity']} | {by[k].get('finding', '')} |")
sys.exit(1 if bad else 0)
PY
cat "$out"
echo "report: bench/results/testssl-$ts.md" >&2
exit $rc
