#!/usr/bin/env bash
# Installs ct2pet-node as a systemd service, as root, from this checkout.
#   scripts/install-service.sh            user, directories, venv, config, unit; prints how to start
#   scripts/install-service.sh --enable   the same, then systemctl enable --now
#
# What the unit expects, and what this script makes (run it again at any time: it
# keeps an existing config and only tightens modes):
#   user/group      ct2pet (system user, no login shell, home /var/lib/ct2pet-node)
#   checkout        this directory, readable by ct2pet (the node runs from its checkout:
#                   the embedded defaults in config/ and the model in weights/ live here)
#   venv            <checkout>/.venv, built with scripts/install.sh from $PYTHON (default
#                   /usr/bin/python3: an interpreter the service user can run; a pyenv or
#                   conda python under /root or /home is not)
#   config          /etc/ct2pet-node/ct2pet-node.toml, root:ct2pet 0640 (it may hold AE
#                   allow-lists and the admin token); copied from systemd/ only when absent
#   data            /var/lib/ct2pet-node, ct2pet:ct2pet 0700 (patient data)
#   unit            /etc/systemd/system/ct2pet-node.service, its paths pointed at this checkout
set -euo pipefail
checkout="$(cd "$(dirname "$0")/.." && pwd)"
service_user=ct2pet
config_dir=/etc/ct2pet-node
config_file="$config_dir/ct2pet-node.toml"
data_dir=/var/lib/ct2pet-node
unit_file=/etc/systemd/system/ct2pet-node.service

enable=0
[ "${1:-}" = "--enable" ] && enable=1

if [ "$(id -u)" != 0 ]; then
    echo "install-service.sh: run as root (it creates a system user and writes to /etc)" >&2
    exit 2
fi

case "$checkout" in
    /home/*|/root/*|/run/user/*)
        # The unit sets ProtectHome=yes: the service would not see a checkout there.
        echo "install-service.sh: move the checkout out of $checkout's home (e.g. to /opt/ct2pet-node):" \
             "the unit's ProtectHome=yes hides /home, /root and /run/user from the service" >&2
        exit 2 ;;
esac

if ! id -u "$service_user" >/dev/null 2>&1; then
    useradd --system --user-group --home-dir "$data_dir" --no-create-home \
        --shell /usr/sbin/nologin "$service_user"
fi

# The data directory is created here as well as by systemd's StateDirectory=, so that
# `config check` below can run before the first start.
install -d -m 0700 -o "$service_user" -g "$service_user" "$data_dir"

python="${PYTHON:-/usr/bin/python3}"
# A venv's interpreter is a link to the one it was built from: it must run as the
# service user, or the unit fails at start with "Permission denied".
if [ -x "$checkout/.venv/bin/python3" ] &&
   ! runuser -u "$service_user" -- "$checkout/.venv/bin/python3" -c '' 2>/dev/null; then
    echo "install-service.sh: $checkout/.venv was built from $(readlink -f "$checkout/.venv/bin/python3")," \
         "which $service_user cannot run; remove $checkout/.venv (or set PYTHON) and run again" >&2
    exit 2
fi
if [ ! -x "$checkout/.venv/bin/python3" ]; then
    if ! runuser -u "$service_user" -- "$python" -c 'import sys; assert sys.version_info >= (3, 11)'; then
        echo "install-service.sh: $python must be Python 3.11+ and runnable by $service_user (set PYTHON)" >&2
        exit 2
    fi
    "$python" -m venv "$checkout/.venv"
fi
(. "$checkout/.venv/bin/activate" && "$checkout/scripts/install.sh")

install -d -m 0755 "$config_dir"
if [ ! -e "$config_file" ]; then
    install -m 0640 -o root -g "$service_user" "$checkout/systemd/ct2pet-node.toml" "$config_file"
else
    chown root:"$service_user" "$config_file"
    chmod 0640 "$config_file"
fi

# The unit names /opt/ct2pet-node; a checkout elsewhere gets its own paths.
sed "s#/opt/ct2pet-node#$checkout#g" "$checkout/systemd/ct2pet-node.service" >"$unit_file.tmp"
chmod 0644 "$unit_file.tmp"
mv "$unit_file.tmp" "$unit_file"

# The same check the unit runs before every start, as the user it runs as: it fails
# here, not at boot, when the checkout or the model is unreadable to that user.
runuser -u "$service_user" -- "$checkout/.venv/bin/ct2pet-node" config check --config "$config_file"

if [ "$(ps -p 1 -o comm=)" = systemd ]; then
    systemctl daemon-reload
    if [ "$enable" = 1 ]; then
        systemctl enable --now ct2pet-node
        systemctl --no-pager status ct2pet-node || true
    else
        echo "installed: start with  systemctl enable --now ct2pet-node"
    fi
else
    echo "installed; systemd is not running here: start the node by hand with"
    echo "  runuser -u $service_user -- $checkout/.venv/bin/ct2pet-node start --config $config_file"
fi
