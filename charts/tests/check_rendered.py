#!/usr/bin/env python3
"""Checks the chart's objects as the API server returned them from
`kubectl apply --dry-run=server -o json` (a List), against what issue 7 asks of them:
pod security, resources, probes, the proxy's projected token, least-privilege RBAC without
wildcards, the NetworkPolicy, and container flags that the real binary accepts.

usage: check_rendered.py LIST.json --kinds Kind,Kind --help-controller FILE --help-proxy FILE
Prints one line per failed check and exits 1 when any failed. Standard library only.
"""

import argparse
import json
import re
import sys

failures = []


def check(ok, what):
    if not ok:
        failures.append(what)


def flags_in_help(path):
    with open(path) as f:
        return set(re.findall(r"(--[a-z0-9-]+)", f.read()))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("objects")
    ap.add_argument("--kinds", required=True, help="kinds that must be present")
    ap.add_argument("--help-controller", required=True)
    ap.add_argument("--help-proxy", required=True)
    a = ap.parse_args()

    with open(a.objects) as f:
        doc = json.load(f)
    objs = doc["items"] if doc.get("kind") == "List" else [doc]
    kinds = {o["kind"] for o in objs}
    for k in a.kinds.split(","):
        check(k in kinds, f"no {k} rendered (have {sorted(kinds)})")

    help_of = {
        "controller": flags_in_help(a.help_controller),
        "proxy": flags_in_help(a.help_proxy),
    }
    by_kind = {}
    for o in objs:
        by_kind.setdefault(o["kind"], []).append(o)

    services = {s["metadata"]["name"]: s for s in by_kind.get("Service", [])}
    secrets = {s["metadata"]["name"]: s for s in by_kind.get("Secret", [])}
    deployments = {}
    for d in by_kind.get("Deployment", []):
        comp = d["metadata"]["labels"].get("app.kubernetes.io/component")
        deployments[comp] = d
        name = d["metadata"]["name"]
        pod = d["spec"]["template"]["spec"]
        psc = pod.get("securityContext", {})
        check(psc.get("runAsNonRoot") is True, f"{name}: pod runAsNonRoot")
        check(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{name}: pod seccomp RuntimeDefault")
        for c in pod["containers"]:
            where = f"{name}/{c['name']}"
            sc = c.get("securityContext", {})
            check(sc.get("runAsNonRoot") is True, f"{where}: runAsNonRoot")
            check(isinstance(sc.get("runAsUser"), int) and sc["runAsUser"] > 0, f"{where}: numeric non-root runAsUser")
            check(sc.get("readOnlyRootFilesystem") is True, f"{where}: readOnlyRootFilesystem")
            check(sc.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation false")
            check(sc.get("privileged") in (None, False), f"{where}: not privileged")
            check(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{where}: capabilities drop ALL")
            check(not sc.get("capabilities", {}).get("add"), f"{where}: no capabilities added")
            check(sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{where}: seccomp RuntimeDefault")
            res = c.get("resources", {})
            for kind in ("requests", "limits"):
                for r in ("cpu", "memory"):
                    check(r in res.get(kind, {}), f"{where}: resources.{kind}.{r}")
            ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
            for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                get = c.get(probe, {}).get("httpGet", {})
                check(get.get("path") == path, f"{where}: {probe} on {path}")
                check(get.get("port") in ports, f"{where}: {probe} on a named container port")
            # Every flag must be one the binary knows (`portcullis <sub> --help`).
            args = c.get("args", [])
            sub = next((x for x in args if not x.startswith("-")), None)
            check(sub == comp, f"{where}: runs `portcullis {comp}` (args {args})")
            for x in args:
                if x.startswith("--"):
                    flag = x.split("=", 1)[0]
                    check(flag in help_of.get(comp, set()), f"{where}: flag {flag} unknown to `portcullis {comp} --help`")

    ctl, proxy = deployments.get("controller"), deployments.get("proxy")
    check(ctl is not None and proxy is not None, "a controller and a proxy Deployment")
    if ctl and proxy:
        ns = proxy["metadata"]["namespace"]
        ppod = proxy["spec"]["template"]["spec"]
        cpod = ctl["spec"]["template"]["spec"]
        check(ctl["spec"].get("replicas", 0) >= 2, "controller: at least 2 replicas (leader election)")
        check(ppod.get("automountServiceAccountToken") is False, "proxy: no automounted API token")
        pargs = dict(x.split("=", 1) for x in ppod["containers"][0]["args"] if "=" in x)
        # The projected token with audience portcullis is the file --token-file reads.
        mounts = {m["name"]: m["mountPath"] for m in ppod["containers"][0].get("volumeMounts", [])}
        token_ok = False
        for v in ppod.get("volumes", []):
            for src in v.get("projected", {}).get("sources", []):
                t = src.get("serviceAccountToken")
                if t and t.get("audience") == "portcullis" and v["name"] in mounts:
                    token_ok = pargs.get("--token-file") == f"{mounts[v['name']]}/{t['path']}"
        check(token_ok, f"proxy: --token-file is a projected token with audience portcullis ({pargs.get('--token-file')})")
        # --controller points at the controller's Service and port, over TLS by default
        # (verified against the CA the proxies' own Secret holds, never the controller's).
        m = re.match(r"^(https?)://([a-z0-9-]+)(\.[a-z0-9-]+\.svc)?:(\d+)$", pargs.get("--controller", ""))
        check(m is not None, f"proxy: --controller is http(s)://<service>:<port> ({pargs.get('--controller')})")
        cargs0 = cpod["containers"][0]["args"]
        tls_on = any(a.startswith("--tls-cert=") for a in cargs0)
        check(tls_on != ("--plaintext" in cargs0), "controller: either --tls-cert or --plaintext")
        if m:
            check((m.group(1) == "https") == tls_on, f"proxy: --controller scheme matches the controller's TLS ({m.group(1)})")
            svc = services.get(m.group(2))
            check(svc is not None, f"proxy: --controller names Service {m.group(2)}, which is not rendered")
            if svc:
                check(int(m.group(4)) in [p["port"] for p in svc["spec"]["ports"]], "proxy: --controller port is the Service's")
                sel = svc["spec"]["selector"]
                labels = ctl["spec"]["template"]["metadata"]["labels"]
                check(all(labels.get(k) == v for k, v in sel.items()), "controller Service selects the controller pods")
        if tls_on:
            def secret_file(pod, flag_args, flag):
                """(Secret name, key) a --flag=path reads through the pod's Secret volumes."""
                path = flag_args.get(flag, "")
                c = pod["containers"][0]
                for mnt in c.get("volumeMounts", []):
                    if path.startswith(mnt["mountPath"] + "/"):
                        vol = next((v for v in pod.get("volumes", []) if v["name"] == mnt["name"]), {})
                        return vol.get("secret", {}).get("secretName"), path[len(mnt["mountPath"]) + 1:]
                return None, None
            cflags0 = dict(x.split("=", 1) for x in cargs0 if x.startswith("--") and "=" in x)
            ctl_secret, key = secret_file(cpod, cflags0, "--tls-cert")
            check(ctl_secret is not None and key == "tls.crt", f"controller: --tls-cert from a Secret's tls.crt ({ctl_secret}, {key})")
            check(secret_file(cpod, cflags0, "--tls-key") == (ctl_secret, "tls.key"), "controller: --tls-key from the same Secret")
            check(secret_file(cpod, cflags0, "--peer-ca")[1] == "ca.crt", "controller: --peer-ca from ca.crt")
            check(cflags0.get("--peer-server-name", "").startswith(f"{m.group(2)}." if m else "?"),
                  f"controller: --peer-server-name is the Service's name ({cflags0.get('--peer-server-name')})")
            proxy_secret, key = secret_file(ppod, pargs, "--controller-ca")
            check(proxy_secret is not None and key == "ca.crt", f"proxy: --controller-ca from a Secret's ca.crt ({proxy_secret})")
            check(proxy_secret != ctl_secret, "proxy: never mounts the controller's Secret (its private key)")
            secret = secrets.get(ctl_secret)
            if secret is not None:  # generated by the chart (not a Secret of the user's)
                check(set(secret.get("data", {})) == {"ca.crt", "tls.crt", "tls.key"}, "controller Secret: ca.crt, tls.crt, tls.key")
            mutual = "--tls-client-ca" in cflags0
            check(mutual == ("--controller-client-cert" in pargs), "mutual TLS on both sides or neither")
            if mutual:
                check(secret_file(ppod, pargs, "--controller-client-cert") == (proxy_secret, "tls.crt"), "proxy: client certificate from its Secret")
        cargs = cpod["containers"][0]["args"]
        want = f"--allow-service-account={ns}/{ppod['serviceAccountName']}"
        check(want in cargs, f"controller: {want}")
        env = {e["name"]: e for e in cpod["containers"][0].get("env", [])}
        check("POD_NAME" in env and "POD_NAMESPACE" in env, "controller: POD_NAME and POD_NAMESPACE (Lease identity and namespace)")
        # The other replicas reach this one's push port at --advertise-url: its pod IP
        # (Kubernetes expands $(POD_IP) in args) and the push container port, plain HTTP
        # like the proxies' --controller.
        pod_ip = env.get("POD_IP", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        check(pod_ip == "status.podIP", f"controller: POD_IP from status.podIP ({pod_ip})")
        cports = {p["name"]: p["containerPort"] for p in cpod["containers"][0].get("ports", [])}
        cflags = dict(x.split("=", 1) for x in cargs if x.startswith("--") and "=" in x)
        want = f"{'https' if tls_on else 'http'}://$(POD_IP):{cports.get('push')}"
        check(cflags.get("--advertise-url") == want, f"controller: --advertise-url={want} ({cflags.get('--advertise-url')})")
        quota_cm = cflags.get("--quota-configmap")
        check(bool(quota_cm), "controller: --quota-configmap names the ledger ConfigMap the Role grants")

        # The API catalog (catalog.enabled): --catalog-listen on the `catalog` container
        # port, a Service <controller>-catalog that selects the controller pods and targets
        # that port, and an optional Ingress whose every backend is that Service's port.
        catalog_on = "--catalog-listen" in cflags
        check(catalog_on == ("catalog" in cports), "controller: --catalog-listen with a `catalog` container port, or neither")
        catalog_svc_name = f"{ctl['metadata']['name']}-catalog"
        catalog_svc = services.get(catalog_svc_name)
        if catalog_on:
            listen = cflags["--catalog-listen"]
            check(listen == f"0.0.0.0:{cports.get('catalog')}",
                  f"controller: --catalog-listen=0.0.0.0:<catalog port> ({listen})")
            check(re.fullmatch(r"[a-z0-9-]+/[a-z0-9.-]+", cflags.get("--catalog-policy", "")) is not None,
                  f"controller: --catalog-policy names a TokenPolicy namespace/name ({cflags.get('--catalog-policy')})")
            check(catalog_svc is not None, f"catalog: Service {catalog_svc_name} rendered")
        else:
            check(catalog_svc is None and not by_kind.get("Ingress"), "catalog off: no catalog Service, no Ingress")
        if catalog_svc:
            labels = ctl["spec"]["template"]["metadata"]["labels"]
            sel = catalog_svc["spec"].get("selector", {})
            check(bool(sel) and all(labels.get(k) == v for k, v in sel.items()),
                  f"catalog Service selects the controller pods ({sel})")
            check(sel.get("app.kubernetes.io/component") == "controller", "catalog Service selects no proxies")
            sports = catalog_svc["spec"]["ports"]
            check(len(sports) == 1 and sports[0].get("targetPort") in ("catalog", cports.get("catalog")),
                  f"catalog Service targets the controller's `catalog` port ({sports})")
            for ing in by_kind.get("Ingress", []):
                n = ing["metadata"]["name"]
                backends = [path["backend"] for rule in ing["spec"].get("rules", []) for path in rule.get("http", {}).get("paths", [])]
                if "defaultBackend" in ing["spec"]:
                    backends.append(ing["spec"]["defaultBackend"])
                check(bool(backends), f"Ingress {n}: has backends")
                for b in backends:
                    svc = b.get("service", {})
                    port = svc.get("port", {})
                    check(svc.get("name") == catalog_svc_name, f"Ingress {n}: backend is Service {catalog_svc_name} ({svc.get('name')})")
                    check(any(port.get("name") == sp.get("name") if "name" in port else port.get("number") == sp["port"] for sp in sports),
                          f"Ingress {n}: backend port {port} is a port of {catalog_svc_name}")

    # RBAC: no wildcards anywhere, and only the verbs the controller uses.
    allowed = {"get", "list", "watch", "create", "update", "patch", "delete"}
    for kind in ("ClusterRole", "Role"):
        for r in by_kind.get(kind, []):
            for rule in r.get("rules", []):
                for field in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
                    check("*" not in rule.get(field, []), f"{kind} {r['metadata']['name']}: wildcard in {field}")
                check(set(rule.get("verbs", [])) <= allowed, f"{kind} {r['metadata']['name']}: unexpected verbs {rule.get('verbs')}")
                res = set(rule.get("resources", []))
                if res & {"secrets", "services"} and kind == "ClusterRole":
                    check(set(rule["verbs"]) <= {"list", "watch"}, f"{kind}: Secrets/Services are read-only cluster-wide")
                if res & {"secrets", "services"} and kind == "Role":
                    # Fetched key sets are kept in Secrets of the controller's own namespace.
                    check(res == {"secrets"} and set(rule["verbs"]) <= {"create", "patch"},
                          f"{kind}: only create/patch of Secrets, in its own namespace")
                if any(x.endswith("/status") for x in res):
                    check(set(rule["verbs"]) <= {"patch"}, f"{kind}: /status is only patched")
    cluster_resources = {x for r in by_kind.get("ClusterRole", []) for rule in r["rules"] for x in rule["resources"]}
    check("leases" not in cluster_resources, "Leases only through a namespaced Role")
    # ConfigMaps: the quota ledger's, in the controller's own namespace only: get, update
    # and patch on its one name; create (which resourceNames cannot restrict) alone.
    check("configmaps" not in cluster_resources, "ConfigMaps only through a namespaced Role")
    quota_cm = None
    if ctl:
        cargs = ctl["spec"]["template"]["spec"]["containers"][0]["args"]
        quota_cm = next((x.split("=", 1)[1] for x in cargs if x.startswith("--quota-configmap=")), None)
    cm_rules = [rule for r in by_kind.get("Role", []) for rule in r["rules"] if "configmaps" in rule.get("resources", [])]
    if by_kind.get("Role"):
        check(any(set(rule["verbs"]) == {"get", "update", "patch"} for rule in cm_rules),
              "Role: get, update, patch on the quota ledger ConfigMap")
        check(any(rule["verbs"] == ["create"] for rule in cm_rules), "Role: create configmaps (the quota ledger)")
    for rule in cm_rules:
        check(rule["resources"] == ["configmaps"], f"Role: configmaps in a rule of their own ({rule['resources']})")
        if rule["verbs"] == ["create"]:
            check(not rule.get("resourceNames"), "Role: create on configmaps has no resourceNames (RBAC ignores them)")
        else:
            check(set(rule["verbs"]) <= {"get", "update", "patch"}, f"Role: configmaps verbs {rule['verbs']}")
            check(rule.get("resourceNames") == [quota_cm],
                  f"Role: configmaps {rule['verbs']} only on --quota-configmap's {quota_cm} ({rule.get('resourceNames')})")

    # NetworkPolicy: only the proxies (and configured metrics scrapers) reach the controller;
    # the API catalog's port, when served, is open to every peer (and nothing else is).
    cports = {}
    if ctl:
        cports = {p["name"]: p["containerPort"] for p in ctl["spec"]["template"]["spec"]["containers"][0].get("ports", [])}
    for np in by_kind.get("NetworkPolicy", []):
        sel = np["spec"]["podSelector"]["matchLabels"]
        check(sel.get("app.kubernetes.io/component") == "controller", "NetworkPolicy selects the controller")
        push_rules = catalog_rules = 0
        for rule in np["spec"]["ingress"]:
            froms = rule.get("from", [])
            ports = [p.get("port") for p in rule.get("ports", [])]
            if ports == ["catalog"]:
                catalog_rules += 1
                check(not froms, f"NetworkPolicy: the catalog port is open to every peer ({froms})")
                continue
            check(bool(froms), f"NetworkPolicy: every ingress rule but the catalog's names its peers (ports {ports})")
            component = [f.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/component") for f in froms]
            proxies = [f for f, c in zip(froms, component) if c == "proxy"]
            if ports == ["push"]:
                push_rules += 1
                # The proxies (config streams, quota leases) and the other controller
                # replicas (quota messages for the leader, at its --advertise-url).
                check(sorted(component) == ["controller", "proxy"] and all(set(f) == {"podSelector"} for f in froms),
                      f"NetworkPolicy: only the proxies and the controllers reach the push port ({froms})")
            else:
                check(ports == ["metrics"], f"NetworkPolicy: a rule for ports {ports}")
                check(not proxies, "NetworkPolicy: the metrics rule is for scrapers")
        check(push_rules == 1, "NetworkPolicy: one rule for the push port, the proxies'")
        check(catalog_rules == (1 if "catalog" in cports else 0),
              f"NetworkPolicy: one rule opening the catalog port when the controller serves it, none otherwise ({catalog_rules})")
    if "NetworkPolicy" in a.kinds:
        check(bool(by_kind.get("NetworkPolicy")), "a NetworkPolicy")

    for cm in by_kind.get("ConfigMap", []):
        if cm["metadata"]["name"].endswith("-dashboard"):
            check(cm["metadata"]["labels"].get("grafana_dashboard") == "1", "dashboard ConfigMap labelled grafana_dashboard: \"1\"")
            dash = json.loads(cm["data"]["portcullis.json"])
            check(dash.get("title") == "Portcullis" and dash.get("panels"), "dashboard ConfigMap holds the dashboard JSON")

    for f in failures:
        print(f"FAIL: {f}")
    print(f"{len(objs)} objects checked, {len(failures)} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
