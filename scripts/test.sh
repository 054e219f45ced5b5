#!/usr/bin/env bash
# Set up and run the test suite on a fresh Debian machine: the tools the tests drive (tshark,
# tcpdump, nmap, masscan, hping3, hydra with OpenSSH's sshd, curl, iproute2 for network namespaces,
# the lab's tunnels, shells, name server and TLS server (iodine, dns2tcp, ptunnel-ng, ncat, socat, dnsmasq,
# openssl),
# chromium and chromium-driver for the console),
# a virtual environment with the project and its test extras, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

debs=(tshark tcpdump nmap masscan hping3 hydra openssh-server openssh-client curl iproute2 procps iputils-ping
      iodine dns2tcp ptunnel-ng ncat socat openssl dnsmasq-base  # lab/scenarios.py runs them against their own servers
      chromium chromium-driver)  # the console's tests drive headless Chromium through Selenium
missing=()
for tool in tshark tcpdump nmap masscan hping3 hydra ssh-keygen curl ip sysctl ping dns2tcpc dns2tcpd ptunnel-ng ncat \
            socat openssl chromium chromedriver; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
for daemon in sshd iodine iodined dnsmasq; do  # in /usr/sbin, off a user's PATH
  [ -x "/usr/sbin/$daemon" ] || missing+=("$daemon")
done
if ((${#missing[@]})); then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "installing Debian packages: ${debs[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${debs[@]}" >/dev/null
fi

# Azurite, Microsoft's Blob Storage emulator, for the Azure adapter's tests (npm; Node.js from Debian)
if ! command -v azurite-blob >/dev/null; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  if ! command -v npm >/dev/null; then
    echo "installing Debian packages: nodejs npm"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq nodejs npm >/dev/null
  fi
  echo "installing azurite (npm)"
  $sudo npm install -g --silent 'azurite@3'
fi

# Google's Pub/Sub emulator (tests/gcp_emulator.py runs `gcloud beta emulators pubsub start`) and a JRE for
# it. The emulator is packaged by Google's own apt repository (google-cloud-cli-pubsub-emulator), not by
# Debian's; the machine image carries it. Where it is missing and that repository is not configured, say how.
sdk_root="$(gcloud info --format='value(installation.sdk_root)' 2>/dev/null || true)"
if [ -z "$sdk_root" ] || [ ! -d "$sdk_root/platform/pubsub-emulator" ] || ! command -v java >/dev/null; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  gcp_debs=(default-jre-headless)
  if [ -z "$sdk_root" ] || [ ! -d "$sdk_root/platform/pubsub-emulator" ]; then
    if ! apt-cache policy google-cloud-cli-pubsub-emulator | grep -q 'Candidate: [0-9]'; then
      echo "the Pub/Sub emulator is missing and no apt source offers google-cloud-cli-pubsub-emulator:" >&2
      echo "add Google Cloud's apt repository (cloud.google.com/sdk/docs/install#deb), then rerun" >&2
      exit 1
    fi
    gcp_debs+=(google-cloud-cli google-cloud-cli-pubsub-emulator)
  fi
  echo "installing Debian packages: ${gcp_debs[*]}"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${gcp_debs[@]}" >/dev/null
fi

# checkov in a virtual environment of its own: it pins an old boto3
if [ ! -x .venv-checkov/bin/checkov ]; then
  echo "installing checkov (its own virtual environment)"
  python3 -m venv .venv-checkov
  .venv-checkov/bin/pip install -q --upgrade pip
  .venv-checkov/bin/pip install -q 'checkov==3.3.30'
fi
export KUBESONAR_CHECKOV="$PWD/.venv-checkov/bin/checkov"

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[test]'
echo "ruff check ."
.venv/bin/ruff check .

# numba compiles the per-packet kernels on first use and caches them; do it once here, a pcap and a
# pcapng through `kubesonar flows`, so no test's time limit pays for the compile (tests/fuzz runs first)
echo "compiling the per-packet kernels"
for capture in tests/fixtures/captures/iputils_ping.pcap ../shared/data/more/benign/ja4_latest.pcapng; do
  if [ -f "$capture" ]; then .venv/bin/kubesonar flows --format jsonl "$capture" >/dev/null; fi
done
# the tests spread over workers (pytest-xdist): most of their time is spent waiting on timers, servers and
# tools, not computing, so more workers than the 2 cores pay. Each worker takes one test at a time, the
# slow ones first (tests/conftest.py), so the run does not end on one long test left alone.
# KUBESONAR_TEST_WORKERS sets how many (0: all in this one process).
workers="${KUBESONAR_TEST_WORKERS:-3}"
PATH="$PWD/.venv/bin:$PATH" .venv/bin/python -m pytest -q -p no:cacheprovider --durations=15 \
  -n "$workers" --dist load --maxschedchunk 1 "$@"
