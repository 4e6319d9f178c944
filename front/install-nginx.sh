#!/bin/sh
# Installs nginx for the front (`make serve`) when it is missing: as root, with apt-get.
# Anywhere else it stops with a message saying what to install.
set -eu

if command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "nginx is missing: make serve runs it in front of gunicorn (see docs/operations.md," >&2
    echo "'What protects the service'). Install it as root (Debian: apt-get install nginx)" >&2
    echo "or run make serve as root on Debian, which installs it." >&2
    exit 1
fi

# The package would start, and with systemd enable, its own nginx with Debian's default
# site on port 80; the front runs an instance of its own, so the packaged service must not
# run. policy-rc.d is Debian's way to keep maintainer scripts from starting services.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    trap 'rm -f "$policy"' EXIT
fi
# Debian 12 and later ship the server as "nginx" (nginx-light became a transitional
# package); on older releases "nginx" pulls in nginx-core. Either gives /usr/sbin/nginx.
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx >/dev/null
if command -v systemctl >/dev/null 2>&1; then
    systemctl disable nginx >/dev/null 2>&1 || true
fi
echo "installed $(/usr/sbin/nginx -v 2>&1)"
