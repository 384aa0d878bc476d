#!/usr/bin/env bash
# Installs the Debian packages the integration tests use, when missing and when we may.
# The tests start their own Prometheus; the package's service must not start (it would hold
# :9090). Nothing is ever stopped by name: a service is kept from starting by policy-rc.d
# (Debian's invoke-rc.d and deb-systemd-invoke honour it), and one the install started anyway
# is stopped through systemd only, by unit, and only if it was not running before.
set -euo pipefail
missing=()
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
if [ ${#missing[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "note: ${missing[*]} not installed and cannot install (need root and apt-get);" \
       "tests that need them will skip" >&2
  exit 0
fi
echo "installing system packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive

systemd=false
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then systemd=true; fi
was_active=false
if $systemd && systemctl is-active --quiet prometheus 2>/dev/null; then was_active=true; fi

policy=/usr/sbin/policy-rc.d
ours=false
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\n# kpigate scripts/ensure-system.sh: no service starts during the install\nexit 101\n' >"$policy"
  chmod 755 "$policy"
  ours=true
fi
cleanup() { if $ours; then rm -f "$policy"; fi; }
trap cleanup EXIT

apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

if $systemd && ! $was_active && systemctl is-active --quiet prometheus 2>/dev/null; then
  echo "stopping the prometheus.service this install started (tests run their own)"
  systemctl stop prometheus
fi
