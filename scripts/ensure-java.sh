#!/usr/bin/env bash
# Spark 4 needs Java 17 or 21. Installs it when running as root with apt-get; otherwise says what to do.
set -euo pipefail
if command -v java >/dev/null 2>&1 && java -version 2>&1 | grep -Eq 'version "(17|21)[."]'; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "Java 17 not found: installing openjdk-17-jre-headless with apt-get" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless
    exit 0
fi
cat >&2 <<'MSG'
sparkfeed needs Java 17 (or 21) for Spark, and `java` on PATH is missing or another version.
Install it, then run make again:
  Debian/Ubuntu:  sudo apt-get install openjdk-17-jre-headless
  Fedora/RHEL:    sudo dnf install java-17-openjdk-headless
  macOS:          brew install openjdk@17
MSG
exit 1
