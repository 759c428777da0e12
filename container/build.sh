#!/usr/bin/env bash
# make container: build the bento and the image flight-delay:<bento version> (and :latest).
#   container/build.sh               BentoML's default base image (python:3.11-slim, from a registry)
#   LOCAL_BASE=1 container/build.sh  a Debian bookworm base built here with debootstrap and docker
#                                    import, for machines that reach no container registry; it carries
#                                    the host's extra CA certificates for installs behind a TLS proxy.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE_IMAGE=flight-delay-base:bookworm-slim  # a new name whenever the base's recipe changes
IMAGE=flight-delay

if ! docker info >/dev/null 2>&1; then
  echo "no Docker engine answers. Start one, e.g.:" >&2
  echo "  apt-get install -y docker.io && dockerd --data-root /var/lib/docker-fd >/tmp/dockerd.log 2>&1 &" >&2
  echo "or point DOCKER_HOST at a running engine." >&2
  exit 2
fi
# The Debian engine's classic builder: the newer CLI on some machines defaults to a BuildKit it lacks.
export DOCKER_BUILDKIT=0
PYTHON=${PYTHON:-$(command -v python3)}  # before PATH changes below
[ -x /usr/bin/docker ] && export PATH="/usr/bin:$PATH"

bentofile=bentofile.yaml
if [ "${LOCAL_BASE:-0}" = 1 ]; then
  if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    command -v debootstrap >/dev/null || { echo "LOCAL_BASE=1 needs debootstrap: apt-get install -y debootstrap" >&2; exit 2; }
    root=$(mktemp -d /tmp/flight-delay-base.XXXXXX)
    trap 'rm -rf "$root"' EXIT
    echo "[container] debootstrap bookworm into $root"
    debootstrap --variant=minbase --include=python3,python3-pip,ca-certificates bookworm "$root" \
      "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >/dev/null
    cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/" 2>/dev/null || true
    chroot "$root" update-ca-certificates >/dev/null
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    # No documentation, manual pages or translations (53 MB), as Debian's slim images: nobody reads
    # them in a serving container, and dpkg leaves them out of any later install too.
    printf 'path-exclude /usr/share/%s/*\n' doc man locale info > "$root/etc/dpkg/dpkg.cfg.d/excludes"
    rm -rf "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/* "$root"/usr/share/info/*
    echo "[container] importing $BASE_IMAGE"
    tar -C "$root" -c . | docker import \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
      --change 'ENV PIP_BREAK_SYSTEM_PACKAGES=1' \
      --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
  fi
  mkdir -p build
  bentofile=build/bentofile.local-base.yaml
  sed "s|^docker:|docker:\n  base_image: \"$BASE_IMAGE\"|" bentofile.yaml | grep -v "python_version" > "$bentofile"
fi

if [ -n "${FLIGHT_DELAY_MODEL:-}${FLIGHT_DELAY_CHALLENGER:-}" ]; then
  mkdir -p build
  roles=build/bentofile.models.yaml
  awk -v model="${FLIGHT_DELAY_MODEL:-}" -v challenger="${FLIGHT_DELAY_CHALLENGER:-}" '
    { print }
    /^envs:/ {
      if (model != "") printf "  - name: FLIGHT_DELAY_MODEL\n    value: \"%s\"\n", model
      if (challenger != "") printf "  - name: FLIGHT_DELAY_CHALLENGER\n    value: \"%s\"\n", challenger
    }' "$bentofile" > "$roles"
  bentofile=$roles
fi

echo "[container] bentoml build"
tag=$("$PYTHON" -m bentoml build -f "$bentofile" --output tag . | tail -n 1 | sed 's/^__tag__://')
version=${tag#*:}
echo "[container] bentoml containerize $tag"
"$PYTHON" -m bentoml containerize "$tag" --opt network=host -t "$IMAGE:$version" -t "$IMAGE:latest"
docker image ls "$IMAGE:$version" --format '[container] {{.Repository}}:{{.Tag}} {{.Size}}'
