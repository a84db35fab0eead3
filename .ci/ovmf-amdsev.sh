#!/usr/bin/env bash
# Run from the repository root: bash .ci/ovmf-amdsev.sh
set -euo pipefail

# SEV-SNP measured direct boot needs edk2's AmdSev firmware (the only build with the
# SNP_KERNEL_HASHES page). Debian ships it as the package `ovmf-amdsev` in unstable only
# (bookworm's and trixie's `ovmf` have no AmdSev build). Fetch that one package with apt into a
# private apt state (the system's sources stay untouched, nothing is installed) and unpack the
# firmware into target/ci-ovmf-amdsev/; the `attest-measure-efi` step measures the real
# kernel.efi on it with `cargo xtask attest measure` and with sev-snp-measure.
amdsev_dir="$PWD/target/ci-ovmf-amdsev"
if [ ! -f /usr/share/ovmf/OVMF.amdsev.fd ] && [ ! -f "$amdsev_dir/OVMF.amdsev.fd" ]; then
  apt_dir="$PWD/target/ci-apt-sid"
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$amdsev_dir"
  # The machine's own Debian mirror (the first `URIs:` of its deb822 sources, or the first
  # `deb` line of sources.list), with the suite swapped for unstable.
  mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  if [ -z "$mirror" ]; then
    mirror=$(awk '$1 == "deb" && $2 !~ /^\[/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  fi
  if [ -z "$mirror" ]; then
    echo "no Debian mirror configured in /etc/apt (needed for ovmf-amdsev)" >&2
    exit 1
  fi
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror sid main" \
    >"$apt_dir/sources.list"
  apt_opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
    -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache")
  apt-get "${apt_opts[@]}" -q update
  (cd "$apt_dir" && apt-get "${apt_opts[@]}" -q download ovmf-amdsev)
  dpkg-deb -x "$apt_dir"/ovmf-amdsev_*.deb "$apt_dir/root"
  cp "$apt_dir/root/usr/share/ovmf/OVMF.amdsev.fd" "$amdsev_dir/"
fi
