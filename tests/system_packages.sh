#!/bin/sh
# The Debian packages the real-component tests need: installed with apt when this user is root
# and one is missing; otherwise one line naming the packages to install, and exit status 1.
#   postgresql: a server the tests start themselves (initdb, pg_ctl)
#   chromium, chromium-driver, tidy: the report's browser and HTML validator tests
#   iproute2, util-linux: the network namespace the tests run in (ip, unshare)
missing=""
need() { command -v "$1" >/dev/null 2>&1 || missing="$missing $2"; }
need tidy tidy
need chromium chromium
need chromedriver chromium-driver
need ip iproute2
need unshare util-linux
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || missing="$missing postgresql"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing the test suite's system packages:$missing" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends $missing >/dev/null && exit 0
  echo "error: apt-get could not install:$missing" >&2
  exit 1
fi
echo "error: the tests need these Debian packages:$missing; install them (sudo apt-get install$missing) and run make test again." >&2
exit 1
