#!/usr/bin/env bash
# Validates deploy/ offline, failing on the first error:
#   1. the Dockerfile with hadolint, and its stub list against Cargo.toml's [[bench]] targets;
#   2. the kustomize base and every overlay, rendered by kubectl kustomize, against the
#      Kubernetes OpenAPI schemas of the pinned versions, strictly (unknown fields fail);
#   3. each overlay's ConfigMap TOML through `meiro-gate check-config` and against the
#      manifests (ports, probes, mounts, grace period): deploy/check_manifests.py.
# Tools come from PyPI into a local venv (deploy/.venv, pinned in requirements-validate.txt);
# nothing needs a cluster or the network beyond that install.
set -euo pipefail
cd "$(dirname "$0")/.."

# Oldest: the preStop sleep action is on by default from 1.30. Newest: what the pinned
# kubernetes-validate ships.
K8S_VERSIONS=(1.30.0 1.37.0)
OVERLAYS=(deploy/k8s/overlays/edge deploy/k8s/overlays/sidecar)

passed=0
fail() { echo "deploy/validate.sh: FAIL: $*" >&2; echo "deploy: $passed passed, 1 failed" >&2; exit 1; }
pass() { passed=$((passed + 1)); }

venv=deploy/.venv
requirements=deploy/requirements-validate.txt
# Reinstall when the pins change (the copy kept in the venv differs).
if ! cmp -s "$requirements" "$venv/requirements.installed" 2>/dev/null; then
  echo "validate: installing pinned tools into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv" || fail "python3 -m venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements" \
    || fail "pip install -r $requirements"
  cp "$requirements" "$venv/requirements.installed"
fi
bin="$venv/bin"

echo "validate: hadolint deploy/Dockerfile"
"$bin/hadolint" --no-color deploy/Dockerfile || fail "hadolint deploy/Dockerfile"
pass
# The dependency layer builds against stub targets; cargo refuses a manifest whose declared
# bench has no file, so the stub list must name every [[bench]].
benches=$(sed -n '/^\[\[bench\]\]/,/^name/ s/^name = "\(.*\)"/\1/p' Cargo.toml | sort | xargs)
stubs=$(sed -n 's/.*for bench in \([a-z_ ]*\); do.*/\1/p' deploy/Dockerfile | xargs -n1 | sort | xargs)
[ "$benches" = "$stubs" ] || fail "Dockerfile stubs benches '$stubs', Cargo.toml declares '$benches'"
pass

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

render() { # DIR OUT
  "$bin/kubectl" kustomize "$1" > "$2" || fail "kubectl kustomize $1"
  for version in "${K8S_VERSIONS[@]}"; do
    "$bin/kubernetes-validate" --strict --quiet -k "$version" "$2" \
      || fail "$1 is not valid Kubernetes $version"
  done
  echo "validate: $1 renders and is valid Kubernetes ${K8S_VERSIONS[*]} (strict)"
  pass
}

render deploy/k8s/base "$out/base.yaml"
# check-config runs the real config loader of this checkout.
cargo build --quiet --locked --bin meiro-gate || fail "cargo build"
for overlay in "${OVERLAYS[@]}"; do
  rendered="$out/$(basename "$overlay").yaml"
  render "$overlay" "$rendered"
  "$bin/python" deploy/check_manifests.py "$overlay" "$rendered" "$out/base.yaml" \
    -- cargo run --quiet --locked --bin meiro-gate -- check-config \
    || fail "$overlay: config or manifests inconsistent"
  pass
done
echo "deploy: $passed passed, 0 failed"
