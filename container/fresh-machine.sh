#!/usr/bin/env bash
# make fresh-machine: the README's two commands, as a newcomer runs them, on bare Debian 12
# (Python 3.11) and Debian 13 (Python 3.13), both externally managed.
#   container/fresh-machine.sh [bookworm] [trixie]
# For each: a minimal debootstrap image (plus the host's CA certificates: HTTPS here goes through a
# TLS proxy), the README's prerequisite line run as it is written, a clean clone of HEAD owned by a
# non-root user, `make run` in the background until /readyz answers and one prediction succeeds,
# Ctrl-C, then `make test`. Any failure fails the script; each step is timed.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x /usr/bin/docker ] && export PATH="/usr/bin:$PATH"
DISTROS=("${@:-bookworm}")
[ $# -gt 0 ] || DISTROS=(bookworm trixie)
PORT=3000  # `make run`'s own port: the README's command, unchanged
user=newcomer
workdir=/home/$user/flight-delay

docker info >/dev/null 2>&1 || { echo "no Docker engine answers: see container/build.sh" >&2; exit 2; }
if curl -s -o /dev/null "http://127.0.0.1:$PORT/"; then
  echo "port $PORT is in use: make run could not serve there" >&2; exit 2
fi

work=$(mktemp -d /tmp/flight-delay-fresh.XXXXXX)
name="flight-delay-fresh-$$"
cleanup() { docker rm -f "$name" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT
trap 'exit 130' INT TERM
git clone -q . "$work/src"  # a clean clone: only what is committed
rm -rf "$work/src/.git"
# The README's prerequisite line, as a root shell runs it (a minimal image has no sudo).
prerequisites=$(grep -m1 -E '^(sudo )?apt-get install .*python3-venv' "$work/src/README.md" | sed -e 's/#.*//' -e 's/^sudo //')
[ -n "$prerequisites" ] || { echo "README.md has no 'apt-get install ... python3-venv' prerequisite line" >&2; exit 2; }

now() { date +%s; }
step() { echo "[fresh-machine $distro] $*"; }

base_image() {  # image $1: a bare Debian of release $2, built once per Docker engine
  local image=$1 root
  if ! docker image inspect "$image" >/dev/null 2>&1; then
    root="$work/root-$2"
    step "debootstrap $2 (minbase)"
    debootstrap --variant=minbase --include=ca-certificates "$2" "$root" \
      "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >/dev/null
    cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/" 2>/dev/null || true
    chroot "$root" update-ca-certificates >/dev/null 2>&1
    tar -C "$root" -c . | docker import \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
      --change 'CMD ["/bin/bash"]' - "$image" >/dev/null
    rm -rf "$root"
  fi
}

for distro in "${DISTROS[@]}"; do
  image="flight-delay-fresh:$distro"
  base_image "$image" "$distro"
  started=$(now)
  docker run -d --init --name "$name" --network=host "$image" sleep infinity >/dev/null  # --init reaps make's exit
  as_root() { docker exec "$name" sh -c "$1"; }
  as_user() { docker exec -u "$user" -w "$workdir" "$name" sh -c "$1"; }

  step "prerequisites: $prerequisites"
  as_root "apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive $prerequisites >/dev/null"
  as_root "useradd -m $user"
  docker cp "$work/src" "$name:$workdir"
  as_root "chown -R $user: $workdir"
  step "$(as_user 'python3 -V') on $(as_root '. /etc/os-release && echo $PRETTY_NAME')"
  prerequisites_done=$(now)

  step "make run (in the background)"
  docker exec -d -u "$user" -w "$workdir" "$name" setsid sh -c 'echo $$ > /tmp/make-run.pid; exec make run > /tmp/make-run.log 2>&1'
  sleep 1
  until curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null; do
    if ! as_user 'kill -0 $(cat /tmp/make-run.pid) 2>/dev/null'; then
      as_user 'tail -30 /tmp/make-run.log'; step "FAILED: make run stopped before the service was ready"; exit 1
    fi
    if (( $(now) - prerequisites_done > 1200 )); then step "FAILED: not ready within 20 min"; exit 1; fi
    sleep 2
  done
  ready=$(now)
  answer=$(curl -sf -X POST "http://127.0.0.1:$PORT/v1/prediction" -H 'Content-Type: application/json' \
    -d '{"flights":[{"OPERA":"Grupo LATAM","TIPOVUELO":"N","MES":3}]}') \
    || { step "FAILED: the prediction was not answered with 2xx"; exit 1; }
  step "make run served /v1/prediction: $answer"
  grep -q '"probability"' <<<"$answer" || { step "FAILED: unexpected answer"; exit 1; }
  as_user 'grep -E "^\[train|saved model" /tmp/make-run.log | sed "s/^/  /"'
  as_user 'kill -INT -$(cat /tmp/make-run.pid)'  # Ctrl-C in the newcomer's terminal
  for _ in $(seq 30); do curl -s -o /dev/null "http://127.0.0.1:$PORT/" || break; sleep 1; done

  step "make test"
  test_started=$(now)
  as_user 'make test' || { step "FAILED: make test"; exit 1; }
  finished=$(now)
  step "PASSED in $((finished - started)) s: prerequisites $((prerequisites_done - started)) s," \
    "make run to a prediction $((ready - prerequisites_done)) s, make test $((finished - test_started)) s"
  docker rm -f "$name" >/dev/null
done
