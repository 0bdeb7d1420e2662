#!/usr/bin/env bash
# Installs imaging-edge-agent as a systemd service from a release made by `npm pack`, or from a bundled
# directory (an unpacked release that already holds node_modules, for boxes without registry access).
#
#   install.sh [--config FILE] [--gpu nvidia] [--start] [--offline] [--root DIR] RELEASE.tgz|DIR
#   install.sh --uninstall [--purge] [--root DIR]
#
# Puts the package in /opt/imaging-edge-agent (production dependencies only, no build step), the unit in
# /etc/systemd/system, sysusers.d/tmpfiles.d entries in /usr/lib, the config in /etc/imaging-edge-agent/
# (an existing agent.yaml is kept), and credential placeholders in /etc/imaging-edge-agent/credentials/.
# Creates the user and directories with systemd-sysusers/systemd-tmpfiles (they work without a running
# systemd); `systemctl daemon-reload/enable` only where systemd is the running init.
# --uninstall removes all of that but keeps /etc/imaging-edge-agent and /var/lib/imaging-edge-agent
# (config, credentials, journal, outbox, inbox); --purge removes those and the user too.
# --root DIR installs under DIR instead of / (staging an image; tests) and never touches the running system.
# docs/DEPLOYMENT.md has the walk-through.
set -euo pipefail

NAME=imaging-edge-agent
ROOT=/
CONFIG=
GPU=
START=0
OFFLINE=0
UNINSTALL=0
PURGE=0
SOURCE=

usage() {
  sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}
die() {
  echo "install.sh: $*" >&2
  exit 1
}
say() { echo "install.sh: $*"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --config) CONFIG=${2:?--config needs a file}; shift 2 ;;
    --gpu) GPU=${2:?--gpu needs a vendor}; shift 2 ;;
    --start) START=1; shift ;;
    --offline) OFFLINE=1; shift ;;
    --root) ROOT=${2:?--root needs a directory}; shift 2 ;;
    --uninstall) UNINSTALL=1; shift ;;
    --purge) PURGE=1; shift ;;
    -h|--help) usage ;;
    -*) echo "install.sh: unknown option $1" >&2; usage ;;
    *) [ -z "$SOURCE" ] || usage; SOURCE=$1; shift ;;
  esac
done
[ "$PURGE" = 0 ] || [ "$UNINSTALL" = 1 ] || die "--purge goes with --uninstall"
[ -z "$GPU" ] || [ "$GPU" = nvidia ] || die "--gpu: only 'nvidia' has a drop-in (systemd/drop-ins/gpu-nvidia.conf)"

ROOT=$(cd "$ROOT" && pwd)
R=${ROOT%/}   # prefix for every path: '' for the real system
LIVE=0        # touch the running system (users, systemctl) only when installing into /
[ -n "$R" ] || LIVE=1
if [ "$LIVE" = 1 ] && [ "$(id -u)" != 0 ]; then die "run as root (or use --root DIR to stage)"; fi

OPT=$R/opt/$NAME
ETC=$R/etc/$NAME
UNIT=$R/etc/systemd/system/$NAME.service
DROPINS=$R/etc/systemd/system/$NAME.service.d
SYSUSERS=$R/usr/lib/sysusers.d/$NAME.conf
TMPFILES=$R/usr/lib/tmpfiles.d/$NAME.conf
STATE=$R/var/lib/$NAME
CACHE=$R/var/cache/$NAME

# systemd is the running init when /run/systemd/system exists (sd_booted(3)).
systemd_running() { [ "$LIVE" = 1 ] && [ -d /run/systemd/system ]; }

if [ "$UNINSTALL" = 1 ]; then
  if systemd_running; then
    systemctl disable --now "$NAME.service" 2>/dev/null || true
  elif [ "$LIVE" = 1 ]; then
    say "systemd is not running here: nothing to stop or disable"
  fi
  rm -rf "$OPT" "$DROPINS" "$CACHE"
  rm -f "$UNIT" "$SYSUSERS" "$TMPFILES"
  systemd_running && systemctl daemon-reload
  if [ "$PURGE" = 1 ]; then
    rm -rf "$ETC" "$STATE"
    if [ "$LIVE" = 1 ] && getent passwd "$NAME" >/dev/null; then userdel "$NAME" 2>/dev/null || true; fi
    if [ "$LIVE" = 1 ] && getent group "$NAME" >/dev/null; then groupdel "$NAME" 2>/dev/null || true; fi
    say "purged: program, unit, config, credentials, state (journal, outbox, inbox) and the $NAME user"
  else
    say "removed the program and the unit; kept $ETC and $STATE (use --purge to remove them)"
  fi
  exit 0
fi

[ -n "$SOURCE" ] || usage
command -v node >/dev/null || die "node (>= 20.9) is not installed"
command -v npm >/dev/null || die "npm is not installed"
NODE=$(command -v node)
node -e 'const [a,b]=process.versions.node.split(".").map(Number); process.exit(a>20||(a===20&&b>=9)?0:1)' ||
  die "node $(node --version) is too old: the agent needs >= 20.9"

# 1. Stage the package next to the old one, then swap (a failed install leaves the old one running).
STAGE=$R/opt/.$NAME.new
rm -rf "$STAGE"
mkdir -p "$STAGE"
trap 'rm -rf "$STAGE"' EXIT
if [ -d "$SOURCE" ]; then
  [ -f "$SOURCE/package.json" ] && [ -f "$SOURCE/dist/agent/cli.js" ] || die "$SOURCE: not a built release (needs package.json and dist/agent/cli.js)"
  cp -a "$SOURCE/." "$STAGE/"
elif [ -f "$SOURCE" ]; then
  tar -xzf "$SOURCE" -C "$STAGE" --strip-components=1 --no-same-owner || die "$SOURCE: not a tarball from npm pack"
  [ -f "$STAGE/dist/agent/cli.js" ] || die "$SOURCE: has no dist/ (make it with npm pack, which builds first)"
else
  die "$SOURCE: no such file or directory"
fi
grep -q "\"name\": \"$NAME\"" "$STAGE/package.json" || die "$SOURCE: is not $NAME"

# 2. Production dependencies. --ignore-scripts keeps npm from running the package's own `prepare`
#    (a TypeScript build: dist/ is already in the release and dev tools are not installed); `npm rebuild`
#    then runs the dependencies' install scripts (better-sqlite3, unix-dgram, sharp). The onnxruntime-node
#    CUDA download is skipped as in the repo's .npmrc (the CPU provider is bundled).
if [ ! -d "$STAGE/node_modules" ]; then
  printf '%s\n' '# as the repository .npmrc: no CUDA download from outside the npm registry' 'onnxruntime-node-install=skip' > "$STAGE/.npmrc"
  NPM_FLAGS=(--omit=dev --no-audit --no-fund --no-package-lock)
  [ "$OFFLINE" = 0 ] || NPM_FLAGS+=(--offline)
  say "installing production dependencies into $OPT"
  (cd "$STAGE" && npm install --ignore-scripts "${NPM_FLAGS[@]}") ||
    die "npm install failed (offline? pass --offline with a filled npm cache, or install from a bundled directory)"
  # Which installed packages have install scripts, required or optional (npm's hidden lockfile knows).
  scripted() {
    (cd "$STAGE" && "$NODE" -e '
      const lock = require("./node_modules/.package-lock.json");
      for (const [p, m] of Object.entries(lock.packages))
        if (m.hasInstallScript && !m.dev && Boolean(m.optional) === (process.argv[1] === "optional"))
          console.log(p.replace(/^.*node_modules\//, ""));' "$1")
  }
  mapfile -t REQUIRED < <(scripted required)
  mapfile -t OPTIONAL < <(scripted optional)
  if [ "${#REQUIRED[@]}" -gt 0 ]; then
    (cd "$STAGE" && ONNXRUNTIME_NODE_INSTALL=skip npm rebuild "${REQUIRED[@]}") || die "building ${REQUIRED[*]} failed (needs python3, make, g++)"
  fi
  for pkg in "${OPTIONAL[@]}"; do
    # Optional (unix-dgram for sd_notify, tfjs-node): a failure is reported, not fatal, as in npm install.
    (cd "$STAGE" && npm rebuild "$pkg" >/dev/null 2>&1) || say "optional dependency $pkg could not be built; the agent runs without it"
  done
  [ -f "$STAGE/node_modules/unix-dgram/build/Release/unix_dgram.node" ] ||
    say "WARNING: unix-dgram did not build: under Type=notify systemd would never see READY (install python3, make, g++)"
fi
(cd "$STAGE" && "$NODE" dist/agent/cli.js --version >/dev/null) || die "the staged agent does not run"
rm -rf "$OPT.old"
[ ! -d "$OPT" ] || mv "$OPT" "$OPT.old"
mv "$STAGE" "$OPT"
rm -rf "$OPT.old"
trap - EXIT
chown -R root:root "$OPT" 2>/dev/null || true
chmod -R u=rwX,go=rX "$OPT"

# 3. Unit, drop-ins, sysusers.d, tmpfiles.d.
install -D -m 0644 "$OPT/systemd/$NAME.service" "$UNIT"
if [ "$NODE" != /usr/bin/node ]; then
  sed -i "s|^ExecStart=/usr/bin/node |ExecStart=$NODE |" "$UNIT"
  say "ExecStart uses $NODE"
fi
install -D -m 0644 "$OPT/systemd/sysusers.d/$NAME.conf" "$SYSUSERS"
install -D -m 0644 "$OPT/systemd/tmpfiles.d/$NAME.conf" "$TMPFILES"
if [ "$GPU" = nvidia ]; then
  install -D -m 0644 "$OPT/systemd/drop-ins/gpu-nvidia.conf" "$DROPINS/gpu-nvidia.conf"
  say "GPU drop-in installed: $DROPINS/gpu-nvidia.conf"
fi

# 4. Config (kept if present) and credentials (root-only; systemd copies them for the service).
install -d -m 0750 "$ETC"
if [ -n "$CONFIG" ]; then
  [ -f "$CONFIG" ] || die "$CONFIG: no such file"
  [ ! -f "$ETC/agent.yaml" ] || cp -p "$ETC/agent.yaml" "$ETC/agent.yaml.bak"
  install -m 0640 "$CONFIG" "$ETC/agent.yaml"
elif [ ! -f "$ETC/agent.yaml" ]; then
  install -m 0640 "$OPT/systemd/agent.yaml" "$ETC/agent.yaml"
fi
install -d -m 0700 "$ETC/credentials"
for cred in mqtt-password client.crt client.key; do
  # LoadCredential= fails the start when a source file is missing: an empty placeholder is harmless for
  # configs that do not use it; a config that does use it must get the real secret here.
  if [ ! -e "$ETC/credentials/$cred" ]; then
    install -m 0600 /dev/null "$ETC/credentials/$cred"
    if grep -v "^[[:space:]]*#" "$ETC/agent.yaml" | grep -q "CREDENTIALS_DIRECTORY}/$cred"; then
      say "WARNING: $ETC/agent.yaml reads \${CREDENTIALS_DIRECTORY}/$cred: put the secret in $ETC/credentials/$cred"
    fi
  fi
done

# 5. User and directories (systemd-sysusers/-tmpfiles work without a running systemd).
if [ "$LIVE" = 1 ]; then
  if command -v systemd-sysusers >/dev/null; then systemd-sysusers "$SYSUSERS"; else
    getent passwd "$NAME" >/dev/null || useradd --system --user-group --home-dir "/var/lib/$NAME" --shell /usr/sbin/nologin "$NAME"
  fi
  if command -v systemd-tmpfiles >/dev/null; then systemd-tmpfiles --create "$TMPFILES"; fi
  chgrp "$NAME" "$ETC" "$ETC/agent.yaml"
  (cd /tmp && runuser -u "$NAME" -- "$NODE" "$OPT/dist/agent/cli.js" validate-config --offline "$ETC/agent.yaml") ||
    say "WARNING: $ETC/agent.yaml does not validate; fix it before starting"
fi

if systemd_running; then
  systemctl daemon-reload
  systemctl enable "$NAME.service"
  if [ "$START" = 1 ]; then
    systemctl restart --no-block "$NAME.service"
    say "started (READY comes once the model is warm and the broker is connected): systemctl status $NAME"
  else
    say "enabled; start with: systemctl start --no-block $NAME"
  fi
elif [ "$LIVE" = 1 ]; then
  say "systemd is not running here (no /run/systemd/system, e.g. a container): installed but NOT enabled or started;"
  say "on the target run: systemctl daemon-reload && systemctl enable --now $NAME"
else
  say "staged under $ROOT (nothing enabled)"
fi
say "installed $(cd "$OPT" && "$NODE" dist/agent/cli.js --version) into $OPT"
