#!/bin/sh
# Makes the Dockerfile's base image, python:3.11-slim-bookworm, when it cannot be pulled:
# Debian bookworm from the Debian mirror this machine's apt uses (debootstrap, minbase),
# with Debian's Python 3.11 as `python`, pip allowed to install into it, and this
# machine's CA certificates, so that the image's pip and apt reach what the host reaches.
# The image is tagged as the official one and labelled as a stand-in; the Dockerfile
# builds on it unchanged. Kept out of the Dockerfile: none of this is needed where the
# official base can be pulled.
set -eu
IMAGE=docker.io/library/python:3.11-slim-bookworm

if podman image exists "$IMAGE"; then
  exit 0
fi
if timeout 120 podman pull -q "$IMAGE" >/dev/null 2>&1; then
  exit 0
fi

# The first URIs line of the host's deb822 sources (or the first deb line of sources.list).
mirror=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n 1)
if [ -z "$mirror" ]; then
  mirror=$(sed -n 's/^deb  *\([^ ]*\).*/\1/p' /etc/apt/sources.list 2>/dev/null | head -n 1)
fi
if [ -z "$mirror" ]; then
  echo "stand-in-base: no Debian mirror in this machine's apt sources" >&2
  exit 2
fi

root=$(mktemp -d /var/tmp/ssm-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3,python3-pip,ca-certificates \
  bookworm "$root" "$mirror" >/dev/null

# The official image's Python is /usr/local/bin/python and pip installs into it freely.
ln -s /usr/bin/python3 "$root/usr/local/bin/python"
rm -f "$root"/usr/lib/python3.*/EXTERNALLY-MANAGED
# Where TLS is inspected on the way out, the image must trust what the host trusts.
cp /etc/ssl/certs/ca-certificates.crt "$root/usr/local/share/ca-certificates/host-bundle.crt"
chroot "$root" update-ca-certificates >/dev/null 2>&1
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin

tar -C "$root" -c . | podman import -q \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'LABEL org.supersizeme.stand-in=debootstrap' \
  --change 'CMD ["python3"]' \
  - "$IMAGE" >/dev/null
echo "stand-in-base: built $IMAGE with debootstrap from the host's Debian mirror"
