"""Cross-checks the rendered Kubernetes manifests against the gateway's own view of its config.

A schema validator knows Kubernetes, not meiro-gate: it accepts a probe on a port nothing
listens on, or a keys_dir no volume provides. This script closes that gap for one overlay:

  * the overlay's ConfigMap TOML is run through `meiro-gate check-config` (the real loader, so
    an unknown or misspelled key fails here, not in a crash-looping pod), with the config keys
    the Secret meiro-gate-env supplies set to placeholders;
  * the effective config (check-config's output) is compared with the Deployment: listen
    ports vs. container ports and probes, keys_dir / TLS files vs. read-only Secret mounts,
    --config vs. the ConfigMap mount, drain_timeout vs. the termination grace period, the
    store and mail outbox vs. a read-only root filesystem;
  * Services, PodDisruptionBudgets and HorizontalPodAutoscalers select or target what exists;
  * every JSON patch target of the overlay names a resource of the base (kustomize silently
    skips a target that matches nothing).

Usage: check_manifests.py OVERLAY_DIR RENDERED_OVERLAY RENDERED_BASE -- CHECK_CONFIG_CMD...
where CHECK_CONFIG_CMD runs `meiro-gate check-config` and gets `--config FILE` appended.
"""

import os
import re
import subprocess
import sys
import tempfile
import tomllib

import yaml

GATEWAY = "meiro-gate"
CONFIG_FILE = "meiro-gate.toml"
# What README "Deployment" puts into the Secret meiro-gate-env: config keys that are secrets.
SECRET_ENV = {
    "MEIRO_GATE_STORE__URL": "postgres://gate:placeholder@postgres:5432/gate?sslmode=verify-full",
    "MEIRO_GATE_MAIL__SMTP_URL": "smtp://gate:placeholder@smtp.example.com:587",
}


class Problems:
    def __init__(self):
        self.items = []

    def check(self, ok, message):
        if not ok:
            self.items.append(message)
        return ok


def load_all(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def seconds(duration):
    """A meiro-gate duration ("500ms", "30s", "10m", "8h") in seconds."""
    m = re.fullmatch(r"(\d+)(ms|s|m|h)", duration)
    if not m:
        raise ValueError(f"unexpected duration {duration!r}")
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def port_of(listen):
    return int(listen.rsplit(":", 1)[1])


def host_of(listen):
    return listen.rsplit(":", 1)[0]


def under(path, mount):
    return path == mount or path.startswith(mount.rstrip("/") + "/")


def effective_config(toml_text, check_config_cmd, problems):
    """The config the gateway would run with, as check-config prints it; None if refused."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEIRO_GATE_")}
    env.update(SECRET_ENV)
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(toml_text)
    try:
        run = subprocess.run(
            [*check_config_cmd, "--config", f.name], env=env, capture_output=True, text=True
        )
    finally:
        os.unlink(f.name)
    if not problems.check(
        run.returncode == 0,
        f"meiro-gate check-config refused the ConfigMap's {CONFIG_FILE}:\n{run.stderr.strip()}",
    ):
        return None
    return tomllib.loads(run.stdout)


def check_gateway_pod(deploy, docs, check_config_cmd, p):
    name = deploy["metadata"]["name"]
    pod = deploy["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod["containers"]}
    gate = containers.get(GATEWAY)
    if not p.check(gate is not None, f"Deployment {name}: no container {GATEWAY}"):
        return
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts = gate.get("volumeMounts", [])
    ports = {port.get("name"): port["containerPort"] for port in gate.get("ports", [])}

    # The ConfigMap behind --config, and the gateway's verdict on it.
    args = gate.get("args", [])
    p.check("--config" in args, f"Deployment {name}: {GATEWAY} is not started with --config")
    config_path = args[args.index("--config") + 1] if "--config" in args else None
    config_mount = next((m for m in mounts if m["mountPath"] == config_path), None)
    if not p.check(config_mount is not None, f"Deployment {name}: nothing mounted at {config_path}"):
        return
    cm_name = volumes[config_mount["name"]].get("configMap", {}).get("name")
    cm = next(
        (d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == cm_name), None
    )
    if not p.check(cm is not None, f"Deployment {name}: ConfigMap {cm_name} is not rendered"):
        return
    key = config_mount.get("subPath", CONFIG_FILE)
    if not p.check(key in cm.get("data", {}), f"ConfigMap {cm_name} has no key {key}"):
        return
    config = effective_config(cm["data"][key], check_config_cmd, p)
    if config is None:
        return

    # Listeners vs. container ports and probes: the kubelet probes the pod IP.
    server, admin = config["server"]["listen"], config["admin"]["listen"]
    p.check(ports.get("http") == port_of(server), f"server.listen {server} vs. port http {ports}")
    p.check(ports.get("admin") == port_of(admin), f"admin.listen {admin} vs. port admin {ports}")
    for listen in (server, admin):
        p.check(
            host_of(listen) in ("0.0.0.0", "[::]"),
            f"{listen} is not reachable over the pod IP",
        )
    for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"),
                        ("readinessProbe", "/readyz")):
        get = gate.get(probe, {}).get("httpGet", {})
        p.check(
            get.get("path") == path and get.get("port") in ("admin", port_of(admin)),
            f"Deployment {name}: {probe} must be GET {path} on the admin port, is {get}",
        )

    # Files the gateway reads must come from read-only Secret mounts.
    def secret_mount_for(path):
        for m in mounts:
            vol = volumes.get(m["name"], {})
            if "secret" in vol and m.get("readOnly") and under(path, m["mountPath"]):
                return vol["secret"]["secretName"]
        return None

    auth = config["auth"]
    if auth["mode"] == "local":
        p.check(
            secret_mount_for(auth["keys_dir"]) is not None,
            f"auth.keys_dir {auth['keys_dir']} is not a read-only Secret mount",
        )
    tls = config["server"].get("tls")
    if tls:
        for f in (tls["cert"], tls["key"]):
            p.check(secret_mount_for(f) is not None, f"server.tls file {f} is not a Secret mount")

    # A read-only root filesystem: whatever the gateway writes needs a writable volume.
    sc = gate.get("securityContext", {})
    p.check(sc.get("readOnlyRootFilesystem") is True, f"{name}: root filesystem not read-only")
    p.check(sc.get("allowPrivilegeEscalation") is False, f"{name}: privilege escalation allowed")
    p.check(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{name}: capabilities not dropped")
    p.check(pod.get("securityContext", {}).get("runAsNonRoot") is True, f"{name}: may run as root")
    writable = [
        m["mountPath"]
        for m in mounts
        if not m.get("readOnly")
        and ({"emptyDir", "persistentVolumeClaim"} & volumes.get(m["name"], {}).keys())
    ]

    def is_writable(path):
        return os.path.isabs(path) and any(under(path, w) for w in writable)

    store = config["store"]["url"]
    if auth["mode"] == "local" and store.startswith("sqlite:"):
        p.check(deploy["spec"].get("replicas", 1) <= 1, f"{name}: replicas sharing SQLite {store}")
        p.check(is_writable(store.split("://", 1)[1]), f"store {store} is not on a writable volume")
    if auth["mode"] == "local" and config["mail"]["transport"] == "file":
        p.check(is_writable(config["mail"]["dir"]), "mail.dir is not on a writable volume")

    # Kubernetes would inject MEIRO_GATE_* variables for a Service named meiro-gate; the
    # gateway treats them as (unknown) config keys.
    p.check(pod.get("enableServiceLinks") is False, f"{name}: enableServiceLinks is not false")

    # SIGTERM comes after preStop; the drain must finish before the kubelet's SIGKILL.
    pre_stop = gate.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    grace = pod.get("terminationGracePeriodSeconds", 30)
    drain = seconds(config["server"]["drain_timeout"])
    p.check(
        pre_stop + drain < grace,
        f"{name}: preStop {pre_stop}s + drain_timeout {drain}s >= grace period {grace}s",
    )


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_references(docs, p):
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    pod_labels = {n: d["spec"]["template"]["metadata"]["labels"] for n, d in deployments.items()}
    for d in deployments.values():
        p.check(
            selects(d["spec"]["selector"]["matchLabels"], pod_labels[d["metadata"]["name"]]),
            f"Deployment {d['metadata']['name']}: selector does not match its pods",
        )
    for doc in docs:
        kind, name = doc["kind"], doc["metadata"]["name"]
        if kind == "Service":
            sel = doc["spec"]["selector"]
            hits = [n for n, labels in pod_labels.items() if selects(sel, labels)]
            p.check(len(hits) == 1, f"Service {name} selects Deployments {hits}, want one")
            for hit in hits:
                named = {
                    port.get("name")
                    for c in deployments[hit]["spec"]["template"]["spec"]["containers"]
                    for port in c.get("ports", [])
                }
                for port in doc["spec"]["ports"]:
                    p.check(
                        port["targetPort"] in named,
                        f"Service {name}: targetPort {port['targetPort']} is no port of {hit}",
                    )
        elif kind == "PodDisruptionBudget":
            sel = doc["spec"]["selector"]["matchLabels"]
            p.check(
                any(selects(sel, labels) for labels in pod_labels.values()),
                f"PodDisruptionBudget {name} selects no pods",
            )
        elif kind == "HorizontalPodAutoscaler":
            ref = doc["spec"]["scaleTargetRef"]
            p.check(
                ref["kind"] == "Deployment" and ref["name"] in deployments,
                f"HorizontalPodAutoscaler {name}: target {ref} is not rendered",
            )
            p.check(doc["spec"].get("minReplicas", 1) >= 2, f"HPA {name}: fewer than 2 replicas")


def check_patch_targets(overlay_dir, base_docs, p):
    with open(os.path.join(overlay_dir, "kustomization.yaml")) as f:
        kustomization = yaml.safe_load(f)
    base = {(d["kind"], d["metadata"]["name"]) for d in base_docs}
    for patch in kustomization.get("patches", []):
        target = patch.get("target")
        if target:
            p.check(
                (target.get("kind"), target.get("name")) in base,
                f"patch target {target} matches no resource of the base",
            )


def main():
    sep = sys.argv.index("--")
    overlay_dir, rendered, rendered_base = sys.argv[1:sep]
    check_config_cmd = sys.argv[sep + 1 :]
    p = Problems()
    docs = load_all(rendered)
    gateways = [
        d
        for d in docs
        if d["kind"] == "Deployment"
        and any(c["name"] == GATEWAY for c in d["spec"]["template"]["spec"]["containers"])
    ]
    p.check(len(gateways) == 1, f"{len(gateways)} Deployments run {GATEWAY}, want one")
    for deploy in gateways:
        p.check(deploy["spec"].get("replicas", 1) >= 2, "fewer than 2 replicas")
        check_gateway_pod(deploy, docs, check_config_cmd, p)
    check_references(docs, p)
    check_patch_targets(overlay_dir, load_all(rendered_base), p)
    for problem in p.items:
        print(f"FAIL {overlay_dir}: {problem}", file=sys.stderr)
    if p.items:
        sys.exit(1)
    print(f"ok   {overlay_dir}: config accepted by check-config and consistent with the manifests")


if __name__ == "__main__":
    main()
