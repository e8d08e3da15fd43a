#!/usr/bin/env bash
# Checks the deployment recipes with the real tools of each platform, as far as this machine allows (.ci/run
# calls it; needs systemd-analyze, nix-instantiate and a Python venv, which .ci/run installs):
#   systemd     `systemd-analyze verify` on deploy/systemd/portcullis.service; any diagnostic fails the check
#               (verify itself exits 0 on unknown keys and bad values, so its output is what counts)
#   NixOS       `nix-instantiate --parse` on every deploy/nixos/*.nix: syntax only, since evaluating the module
#               needs a nixpkgs checkout, which cannot be fetched here
#   Kubernetes  `kubernetes-validate --strict` (schemas bundled in the PyPI package, no cluster, no network) on
#               every manifest in deploy/k8s except kustomization.yaml, which has no schema
# The Dockerfile, the Grafana dashboard and the configurations inside the recipes are checked by
# `cargo test --test it deploy` (tests/it/deploy.rs). No Docker engine runs in CI, so the image is not built.
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_VERSION=1.30.0
KUBERNETES_VALIDATE=kubernetes-validate==1.37.0
venv=${PORTCULLIS_CI_VENV:-${TMPDIR:-/tmp}/portcullis-ci-venv}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "-- systemd: systemd-analyze verify deploy/systemd/portcullis.service"
# verify requires every Exec*= program to exist; the binary is not installed here, so a copy of the unit runs
# /bin/true in its place. Everything else is verified as written.
sed 's|/usr/bin/portcullis|/bin/true|g' deploy/systemd/portcullis.service >"$work/portcullis.service"
systemd-analyze verify --man=no "$work/portcullis.service" >"$work/verify.log" 2>&1 || {
  cat "$work/verify.log"
  exit 1
}
if [ -s "$work/verify.log" ]; then
  cat "$work/verify.log"
  echo "systemd-analyze verify reported problems" >&2
  exit 1
fi

echo "-- NixOS: nix-instantiate --parse deploy/nixos/*.nix (syntax only: no nixpkgs to evaluate against)"
for f in deploy/nixos/*.nix; do
  NIX_CONFIG="build-users-group =" nix-instantiate --parse "$f" >/dev/null
done

echo "-- Kubernetes: kubernetes-validate --strict -k $K8S_VERSION deploy/k8s/*.yaml"
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "$KUBERNETES_VALIDATE"
fi
manifests=()
for f in deploy/k8s/*.yaml; do
  [ "$(basename "$f")" = kustomization.yaml ] || manifests+=("$f")
done
"$venv/bin/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "${manifests[@]}"

echo "deployment recipes ok"
