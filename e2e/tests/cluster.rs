//! Portcullis on a real kube-apiserver + etcd, driven with kubectl and the YAML a user
//! writes: two controller replicas (Lease), three proxies authenticating with
//! ServiceAccount tokens through TokenReview, a real upstream. Run by `e2e/run.sh`, which
//! starts the control plane; each step works in its own namespace and waits on
//! conditions with timeouts.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

// === helpers ===

use portcullis_e2e::kubectl::{apply, install_crds, k, kubectl, namespace, service_account_token};
use portcullis_e2e::oidc::{API, OidcProvider};
use portcullis_e2e::{
    Proc, bin, free_port, http_get, pct, repo, start_controller, start_proxy, status, wait_until,
};

/// `kubectl patch KIND NAME -n NS --type TYPE -p BODY`.
fn patch(kind: &str, name: &str, ns: &str, patch_type: &str, body: &str) {
    k(&[
        "patch", kind, name, "-n", ns, "--type", patch_type, "-p", body,
    ]);
}

fn mint(key: &Path, jti: &str, scope: &str) -> String {
    portcullis_e2e::mint_token(
        key,
        &[
            "--sub", "alice", "--scope", scope, "--ttl", "10m", "--jti", jti,
        ],
    )
}

fn dev_key() -> PathBuf {
    repo().join("examples/quickstart/dev-private.pem")
}

/// The quickstart policy and route, moved into `ns`, on host `<ns>.test`, to `upstream`.
fn quickstart(ns: &str, upstream: u16) -> String {
    let policy = std::fs::read_to_string(repo().join("examples/quickstart/policy.yaml")).unwrap();
    let route = std::fs::read_to_string(repo().join("examples/quickstart/route.yaml")).unwrap();
    format!("{policy}\n---\n{route}")
        .replace("namespace: default", &format!("namespace: {ns}"))
        .replace("- localhost", &format!("- {ns}.test"))
        .replace("[localhost]", &format!("[{ns}.test]"))
        .replace(
            "http://127.0.0.1:9000",
            &format!("http://127.0.0.1:{upstream}"),
        )
}

fn condition(kind: &str, ns: &str, name: &str, type_: &str) -> (String, String, String) {
    let path = format!(
        "jsonpath={{.status.conditions[?(@.type==\"{type_}\")].status}}|{{.status.conditions[?(@.type==\"{type_}\")].reason}}|{{.status.conditions[?(@.type==\"{type_}\")].observedGeneration}}"
    );
    let out = kubectl(&["get", kind, name, "-n", ns, "-o", &path], None).1;
    let mut p = out.split('|').map(str::to_owned);
    (
        p.next().unwrap_or_default(),
        p.next().unwrap_or_default(),
        p.next().unwrap_or_default(),
    )
}

fn all_proxies(ports: &[u16], host: &str, token: &str, want: u16) -> bool {
    ports
        .iter()
        .all(|p| status(*p, host, "/orders", Some(token)) == want)
}

/// `token` with its header's `kid` replaced by one no provider published.
fn idp_token_unseen(token: &str) -> String {
    let header = r#"{"alg":"RS256","typ":"at+jwt","kid":"never-published"}"#;
    let (_, rest) = token.split_once('.').unwrap();
    format!("{}.{rest}", portcullis_e2e::b64url(header.as_bytes()))
}

// === the suite ===

#[test]
#[ignore = "needs the e2e control plane: run e2e/run.sh"]
fn portcullis_on_a_real_api_server() {
    let tmp = std::env::temp_dir().join(format!("portcullis-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();

    // CRDs, the controllers' namespace, ServiceAccounts.
    install_crds();
    let token_file = |sa: &str| service_account_token(sa, &tmp);
    let proxy_token = token_file("portcullis-proxy");

    // Upstream, two controllers, three proxies.
    let echo_port = free_port();
    let _echo = Proc::start(
        "echo",
        &["echo", "--listen", &format!("127.0.0.1:{echo_port}")],
    );
    let c_ports = [free_port(), free_port()];
    let m_ports = [free_port(), free_port()];
    let controller = |i: usize| {
        start_controller(
            &format!("controller-{i}"),
            c_ports[i],
            m_ports[i],
            &["--prune-interval", "1s"],
        )
    };
    let mut controllers = vec![controller(0), controller(1)];
    let p_ports = [free_port(), free_port(), free_port()];
    let a_ports = [free_port(), free_port(), free_port()];
    let state_file = tmp.join("proxy-2.state");
    let proxy = |i: usize, token: &Path| {
        let state = state_file.to_str().unwrap();
        let extra: &[&str] = if i == 2 {
            &["--state-file", state]
        } else {
            &[]
        };
        start_proxy(
            &format!("proxy-{i}"),
            c_ports[i.min(1)],
            token,
            (p_ports[i], a_ports[i]),
            extra,
        )
    };
    let mut proxies = [
        proxy(0, &proxy_token),
        proxy(1, &proxy_token),
        proxy(2, &proxy_token),
    ];
    for a in a_ports {
        wait_until("proxies ready", Duration::from_secs(30), || {
            http_get(a, "/readyz").0 == 200
        });
    }
    println!("== stack up: controllers {c_ports:?}, proxies {p_ports:?}");

    // --- READY, explain, allow/401/403/404 through each proxy ---
    let ns = "e2e-basic";
    let host = format!("{ns}.test");
    namespace(ns);
    apply(&quickstart(ns, echo_port));
    k(&[
        "wait",
        "--for=condition=Programmed",
        "--timeout=30s",
        "-n",
        ns,
        "apiroute/orders",
        "tokenpolicy/default",
    ]);
    let table = k(&["get", "apiroutes,tokenpolicies", "-n", ns]);
    assert!(
        table.contains("READY") && table.matches("True").count() >= 2,
        "{table}"
    );
    let explain = k(&["explain", "apiroute.spec.rules.requiredScopes"]);
    assert!(explain.contains("Scopes the token must hold"), "{explain}");
    // Programmed can come first from the proxies of the leader's own replica: a proxy on
    // the other replica is counted once that replica's acks reach the leader (through its
    // Lease), so the count is awaited, not read once.
    let mut proxies_status = String::new();
    wait_until(
        "status.proxies 3/3 on apiroute/orders",
        Duration::from_secs(30),
        || {
            proxies_status = k(&[
                "get",
                "apiroute",
                "orders",
                "-n",
                ns,
                "-o",
                "jsonpath={.status.proxies.programmed}/{.status.proxies.connected}",
            ]);
            proxies_status == "3/3"
        },
    );
    assert_eq!(proxies_status, "3/3");
    let good = mint(&dev_key(), "basic-1", "orders:read");
    for p in p_ports {
        assert_eq!(status(p, &host, "/orders", Some(&good)), 200);
        assert_eq!(status(p, &host, "/orders", None), 401);
        assert_eq!(
            status(
                p,
                &host,
                "/orders",
                Some(&mint(&dev_key(), "basic-2", "profile"))
            ),
            403
        );
        assert_eq!(status(p, &host, "/nothing", Some(&good)), 404);
        assert_eq!(status(p, "unknown.test", "/orders", Some(&good)), 404);
    }
    println!("== allow/401/403/404 on all three proxies");

    // --- rejected at apply time by the CRD's CEL rules, with its message ---
    let (ok, _, err) = kubectl(
        &["apply", "-f", "-"],
        Some(&format!(
            "apiVersion: portcullis.dev/v1alpha1\nkind: TokenPolicy\nmetadata: {{name: bad, namespace: {ns}}}\nspec:\n  issuers: [{{issuer: x, audiences: [a], algorithms: [none], jwks: {{uri: 'https://x'}}}}]\n  clockSkew: -5s\n"
        )),
    );
    assert!(!ok);
    assert!(
        err.contains("algorithm none is never allowed")
            && err.contains("clockSkew must be a positive duration"),
        "{err}"
    );
    // --- semantically bad: ResolvedRefs=False, a Warning Event, the rest keeps working ---
    apply(&format!(
        "apiVersion: portcullis.dev/v1alpha1\nkind: ApiRoute\nmetadata: {{name: dangling, namespace: {ns}}}\nspec:\n  hosts: [dangling.{ns}.test]\n  policyRef: {{name: missing}}\n  backend: {{url: 'http://127.0.0.1:{echo_port}'}}\n  rules: [{{match: {{pathPrefix: /}}}}]\n"
    ));
    wait_until("ResolvedRefs=False", Duration::from_secs(20), || {
        condition("apiroute", ns, "dangling", "ResolvedRefs").1 == "PolicyNotFound"
    });
    wait_until("a Warning Event", Duration::from_secs(20), || {
        k(&[
            "get",
            "events",
            "-n",
            ns,
            "--field-selector",
            "reason=PolicyNotFound",
            "-o",
            "name",
        ])
        .contains("event")
    });
    assert_eq!(status(p_ports[0], &host, "/orders", Some(&good)), 200);
    println!("== CEL rejection at apply time; ResolvedRefs=False + Warning Event; rest unaffected");

    // --- a scope change reaches all proxies; Programmed and status.proxies follow ---
    patch(
        "apiroute",
        "orders",
        ns,
        "json",
        r#"[{"op":"replace","path":"/spec/rules/0/requiredScopes","value":["orders:admin"]}]"#,
    );
    wait_until("403 everywhere", Duration::from_secs(10), || {
        all_proxies(&p_ports, &host, &good, 403)
    });
    wait_until(
        "Programmed for generation 2",
        Duration::from_secs(20),
        || {
            condition("apiroute", ns, "orders", "Programmed")
                == ("True".into(), "Programmed".into(), "2".into())
        },
    );
    let counts = k(&[
        "get",
        "apiroute",
        "orders",
        "-n",
        ns,
        "-o",
        "jsonpath={.status.proxies.programmed}/{.status.proxies.connected}",
    ]);
    assert_eq!(counts, "3/3", "status.proxies after the scope change");
    patch(
        "apiroute",
        "orders",
        ns,
        "json",
        r#"[{"op":"replace","path":"/spec/rules/0/requiredScopes","value":["orders:read"]}]"#,
    );
    wait_until("200 again", Duration::from_secs(10), || {
        all_proxies(&p_ports, &host, &good, 200)
    });
    println!("== scope change propagated; Programmed follows the generation");

    // --- revocation: `portcullis revoke --token -` and a kubectl patch ---
    let victim = mint(&dev_key(), "victim-1", "orders:read");
    assert!(all_proxies(&p_ports, &host, &victim, 200));
    let mut revoke = Command::new(bin())
        .args([
            "revoke",
            "--policy",
            &format!("{ns}/default"),
            "--token",
            "-",
        ])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    revoke
        .stdin
        .take()
        .unwrap()
        .write_all(victim.as_bytes())
        .unwrap();
    let out = revoke.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until(
        "revoked by token hash everywhere",
        Duration::from_secs(5),
        || all_proxies(&p_ports, &host, &victim, 401),
    );
    let stored = k(&["get", "tokenpolicy", "default", "-n", ns, "-o", "json"]);
    assert!(
        !stored.contains(&victim[..40]),
        "the token itself was stored"
    );
    let mut latencies = Vec::new();
    for i in 0..50 {
        let t = mint(&dev_key(), &format!("measure-{i}"), "orders:read");
        assert!(all_proxies(&p_ports, &host, &t, 200));
        let t0 = Instant::now();
        patch(
            "tokenpolicy",
            "default",
            ns,
            "json",
            &format!(
                r#"[{{"op":"add","path":"/spec/revocations/-","value":{{"jti":"measure-{i}"}}}}]"#
            ),
        );
        let mut pending: Vec<u16> = p_ports.to_vec();
        while !pending.is_empty() {
            pending.retain(|p| status(*p, &host, "/orders", Some(&t)) != 401);
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "revocation {i} not enforced"
            );
        }
        latencies.push(t0.elapsed());
    }
    println!(
        "== revocation, API write -> enforced on all three proxies, 50 runs: p50 {:?} p99 {:?} (includes kubectl's own start-up)",
        pct(&mut latencies, 0.5),
        pct(&mut latencies, 0.99)
    );

    // --- JWKS rotation through a Secret update ---
    let ns2 = "e2e-rotation";
    let host2 = format!("{ns2}.test");
    namespace(ns2);
    let second = tmp.join("second.pem");
    let genrsa = Command::new("openssl")
        .args(["genrsa", "2048"])
        .output()
        .unwrap();
    assert!(genrsa.status.success());
    std::fs::write(
        &second,
        format!(
            "# PORTCULLIS DEV-ONLY KEY: never use in production\n{}",
            String::from_utf8_lossy(&genrsa.stdout)
        ),
    )
    .unwrap();
    let public_of = |key: &Path| {
        let out = Command::new("openssl")
            .args(["rsa", "-in", key.to_str().unwrap(), "-pubout"])
            .stderr(Stdio::null())
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    let secret = |pem: &str| {
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: issuer-key, namespace: {ns2}}}\nstringData:\n  key.pem: |\n{}",
            pem.lines()
                .map(|l| format!("    {l}\n"))
                .collect::<String>()
        )
    };
    apply(&secret(&public_of(&dev_key())));
    let q = quickstart(ns2, echo_port);
    let (from, to) = (
        q.find("      jwks:").unwrap(),
        q.find("  clockSkew").unwrap(),
    );
    apply(&format!(
        "{}      jwks:\n        secretRef: {{name: issuer-key, key: key.pem}}\n{}",
        &q[..from],
        &q[to..]
    ));
    k(&[
        "wait",
        "--for=condition=Programmed",
        "--timeout=30s",
        "-n",
        ns2,
        "tokenpolicy/default",
    ]);
    let old_key_token = mint(&dev_key(), "rot-old", "orders:read");
    let new_key_token = mint(&second, "rot-new", "orders:read");
    wait_until("old key accepted", Duration::from_secs(10), || {
        all_proxies(&p_ports, &host2, &old_key_token, 200)
    });
    assert!(all_proxies(&p_ports, &host2, &new_key_token, 401));
    apply(&secret(&public_of(&second)));
    wait_until("new key accepted", Duration::from_secs(10), || {
        all_proxies(&p_ports, &host2, &new_key_token, 200)
    });
    assert!(
        all_proxies(&p_ports, &host2, &old_key_token, 401),
        "the removed key still verifies"
    );
    println!("== JWKS rotation through a Secret: new key accepted, removed key refused");

    // --- OIDC discovery from a real provider: the leader fetches, all proxies verify;
    //     a rotation reaches every proxy through the unknown-kid refetch ---
    let idp = OidcProvider::start();
    let ns3 = "e2e-oidc";
    let host3 = format!("{ns3}.test");
    namespace(ns3);
    apply(&format!(
        r#"apiVersion: portcullis.dev/v1alpha1
kind: TokenPolicy
metadata: {{name: idp, namespace: {ns3}}}
spec:
  issuers:
  - issuer: {issuer}
    audiences: [{API}]
    algorithms: [RS256]
    jwks:
      discovery: true
      minRefreshInterval: 2s
---
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {{name: orders, namespace: {ns3}}}
spec:
  hosts: [{host3}]
  policyRef: {{name: idp}}
  backend: {{url: "http://127.0.0.1:{echo_port}"}}
  rules:
  - match: {{pathPrefix: /orders}}
    requiredScopes: [orders:read]
"#,
        issuer = idp.issuer()
    ));
    for cond in ["--for=condition=KeysReady", "--for=condition=Programmed"] {
        k(&["wait", cond, "--timeout=30s", "-n", ns3, "tokenpolicy/idp"]);
    }
    let (keys_ready, reason, _) = condition("tokenpolicy", ns3, "idp", "KeysReady");
    assert_eq!((keys_ready.as_str(), reason.as_str()), ("True", "Fetched"));
    let before = idp.token(API, "orders:read");
    wait_until("provider tokens accepted", Duration::from_secs(10), || {
        all_proxies(&p_ports, &host3, &before, 200)
    });
    let fetches = idp.served("jwks");
    idp.rotate();
    let rotated = Instant::now();
    let after = idp.token(API, "orders:read");
    for (i, p) in p_ports.iter().enumerate() {
        assert_eq!(
            status(*p, &host3, "/orders", Some(&after)),
            200,
            "proxy {i}: the new key's first token"
        );
    }
    println!(
        "== OIDC rotation: new key accepted by all three proxies on their first request, {:?} after the rotation, {} JWKS fetch(es)",
        rotated.elapsed(),
        idp.served("jwks") - fetches
    );
    assert!(
        idp.served("jwks") - fetches <= 2,
        "one refetch cluster-wide"
    );
    assert!(
        all_proxies(&p_ports, &host3, &before, 200),
        "old key still published"
    );

    // The provider stops: a refetch fails, KeysReady says so with a Warning Event, and
    // every proxy keeps verifying with the last good keys. It comes back: KeysReady again.
    idp.stop();
    let unseen = idp_token_unseen(&after);
    wait_until(
        "KeysReady=False FetchFailed",
        Duration::from_secs(30),
        || {
            // A token with an unknown kid asks for a refetch (once per minRefreshInterval).
            let _ = status(p_ports[0], &host3, "/orders", Some(&unseen));
            condition("tokenpolicy", ns3, "idp", "KeysReady").1 == "FetchFailed"
        },
    );
    let events = k(&[
        "get",
        "events",
        "-n",
        ns3,
        "--field-selector",
        "reason=FetchFailed",
        "-o",
        "name",
    ]);
    assert!(!events.trim().is_empty(), "a FetchFailed Event");
    assert!(
        all_proxies(&p_ports, &host3, &after, 200),
        "last good keys kept"
    );
    idp.resume();
    wait_until("KeysReady=True again", Duration::from_secs(60), || {
        condition("tokenpolicy", ns3, "idp", "KeysReady").0 == "True"
    });
    println!(
        "== OIDC provider down: KeysReady=False FetchFailed + Event, keys kept; back: KeysReady=True"
    );
    drop(idp);

    // --- API keys: a Secret made by `portcullis apikey create --apply`, selected by a
    //     policy's label selector, reaches every proxy; revoked by id; rotated with overlap ---
    let nsk = "e2e-apikeys";
    let hostk = format!("{nsk}.test");
    namespace(nsk);
    apply(&format!(
        r#"apiVersion: portcullis.dev/v1alpha1
kind: TokenPolicy
metadata: {{name: keys, namespace: {nsk}}}
spec:
  apiKeys: {{selector: {{matchLabels: {{team: payments}}}}}}
---
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {{name: orders, namespace: {nsk}}}
spec:
  hosts: [{hostk}]
  policyRef: {{name: keys}}
  backend: {{url: "http://127.0.0.1:{echo_port}"}}
  rules:
    - match: {{pathPrefix: /orders}}
      requiredScopes: [orders:read]
"#
    ));
    k(&[
        "wait",
        "--for=condition=Programmed",
        "--timeout=30s",
        "-n",
        nsk,
        "apiroute/orders",
        "tokenpolicy/keys",
    ]);
    let create = |extra: &[&str]| -> String {
        let mut args = vec![
            "apikey",
            "create",
            "--consumer",
            "alice",
            "--scope",
            "orders:read",
            "--label",
            "team=payments",
            "--namespace",
            nsk,
            "--apply",
        ];
        args.extend_from_slice(extra);
        let out = Command::new(bin()).args(&args).output().unwrap();
        assert!(
            out.status.success(),
            "apikey create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let key1 = create(&["--name", "alice-1"]);
    assert!(key1.starts_with("pcl_") && key1.len() == 54, "{key1}");
    // The Secret holds the hash, never the key.
    let secret = k(&["get", "secret", "alice-1", "-n", nsk, "-o", "json"]);
    assert!(!secret.contains(&key1[16..]), "the key reached the Secret");
    wait_until("an API key on every proxy", Duration::from_secs(30), || {
        all_proxies(&p_ports, &hostk, &key1, 200)
    });
    assert!(all_proxies(
        &p_ports,
        &hostk,
        &format!("{}x", &key1[..53]),
        401
    ));
    // Rotation: a new key, the old one expiring after the overlap; both work meanwhile.
    let key2 = create(&[
        "--name",
        "alice-2",
        "--rotate",
        "alice-1",
        "--overlap",
        "1h",
    ]);
    wait_until(
        "the rotated key on every proxy",
        Duration::from_secs(30),
        || all_proxies(&p_ports, &hostk, &key2, 200),
    );
    assert!(all_proxies(&p_ports, &hostk, &key1, 200), "overlap window");
    assert!(
        !k(&[
            "get",
            "secret",
            "alice-1",
            "-n",
            nsk,
            "-o",
            "jsonpath={.data.expiresAt}"
        ])
        .trim()
        .is_empty(),
        "the old key was given an expiry"
    );
    // Revoke the old key by id with the CLI: a small delta, every proxy.
    let id1 = &key1[4..16];
    let out = Command::new(bin())
        .args([
            "revoke",
            "--policy",
            &format!("{nsk}/keys"),
            "--api-key-id",
            id1,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "revoke: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until(
        "an API key revoked on every proxy",
        Duration::from_secs(30),
        || all_proxies(&p_ports, &hostk, &key1, 401),
    );
    assert!(all_proxies(&p_ports, &hostk, &key2, 200));
    // Deleting the Secret removes the key.
    k(&["delete", "secret", "alice-2", "-n", nsk]);
    wait_until(
        "a deleted key refused on every proxy",
        Duration::from_secs(30),
        || all_proxies(&p_ports, &hostk, &key2, 401),
    );
    println!("== API keys: created with --apply, rotated, revoked by id, deleted");

    // --- proxies with a wrong or missing ServiceAccount token are refused ---
    let intruder_token = token_file("intruder");
    let empty = tmp.join("empty.token");
    std::fs::write(&empty, "").unwrap();
    for (i, t) in [(3usize, &intruder_token), (4, &empty)] {
        let (pp, ap) = (free_port(), free_port());
        let mut p = Proc::start(
            &format!("intruder-{i}"),
            &[
                "proxy",
                "--controller",
                &format!("http://127.0.0.1:{}", c_ports[0]),
                "--token-file",
                t.to_str().unwrap(),
                "--listen",
                &format!("127.0.0.1:{pp}"),
                "--admin",
                &format!("127.0.0.1:{ap}"),
            ],
        );
        wait_until("intruder admin up", Duration::from_secs(10), || {
            http_get(ap, "/healthz").0 == 200
        });
        std::thread::sleep(Duration::from_millis(1500));
        assert_eq!(
            http_get(ap, "/readyz").0,
            503,
            "a proxy with a bad token got config"
        );
        p.kill();
    }
    assert_eq!(
        http_get(c_ports[0], "/metrics").0,
        404,
        "metrics only on the metrics port"
    );
    let metrics = http_get(m_ports[0], "/metrics").1;
    assert!(
        metrics.contains("portcullis_controller_refused_streams_total{reason=\"forbidden\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("portcullis_controller_refused_streams_total{reason=\"missing_token\"}"),
        "{metrics}"
    );
    println!("== wrong (403) and missing (401) ServiceAccount tokens refused");

    // --- the leader dies: the standby takes the Lease and status keeps updating ---
    let holder = || {
        k(&[
            "get",
            "lease",
            "portcullis-controller",
            "-n",
            "portcullis-system",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])
    };
    let leader = holder();
    let idx: usize = leader
        .trim_start_matches("controller-")
        .parse()
        .expect("a controller holds the Lease");
    controllers[idx].kill();
    wait_until(
        "the standby takes the Lease",
        Duration::from_secs(20),
        || holder() == format!("controller-{}", 1 - idx),
    );
    patch(
        "apiroute",
        "orders",
        ns,
        "merge",
        r#"{"spec":{"passAuthorization":true}}"#,
    );
    wait_until(
        "status from the new leader",
        Duration::from_secs(20),
        || condition("apiroute", ns, "orders", "Accepted").2 == "4",
    );
    controllers[idx] = controller(idx);
    println!("== leader {leader} killed; the standby took the Lease and wrote status");

    // --- controllers down: proxies keep enforcing; back: they catch up ---
    for c in &mut controllers {
        c.kill();
    }
    let late = mint(&dev_key(), "while-down", "orders:read");
    for p in p_ports {
        assert_eq!(
            status(p, &host, "/orders", Some(&victim)),
            401,
            "revocation lost while the controller is down"
        );
        assert_eq!(status(p, &host, "/orders", Some(&good)), 200);
    }
    patch(
        "tokenpolicy",
        "default",
        ns,
        "json",
        r#"[{"op":"add","path":"/spec/revocations/-","value":{"jti":"while-down"}}]"#,
    );
    // A proxy restarted with its state file serves at once, controller or not.
    proxies[2].kill();
    proxies[2] = proxy(2, &proxy_token);
    wait_until(
        "restarted proxy ready from its state file",
        Duration::from_secs(10),
        || http_get(a_ports[2], "/readyz").0 == 200,
    );
    assert_eq!(status(p_ports[2], &host, "/orders", Some(&victim)), 401);
    assert_eq!(status(p_ports[2], &host, "/orders", Some(&good)), 200);
    controllers.clear();
    controllers.extend([controller(0), controller(1)]);
    wait_until(
        "catch up after the controllers return",
        Duration::from_secs(30),
        || all_proxies(&p_ports, &host, &late, 401),
    );
    println!(
        "== controllers down: last snapshot enforced; state file served at once; caught up after"
    );

    // --- kube-apiserver restarted (etcd kept): nothing lost, changes flow again ---
    let cluster = repo().join("e2e/cluster.sh");
    let out = Command::new(&cluster)
        .arg("restart-apiserver")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = mint(&dev_key(), "after-restart", "orders:read");
    assert!(all_proxies(&p_ports, &host, &good, 200));
    patch(
        "tokenpolicy",
        "default",
        ns,
        "json",
        r#"[{"op":"add","path":"/spec/revocations/-","value":{"jti":"after-restart"}}]"#,
    );
    wait_until(
        "revocation after the API server restart",
        Duration::from_secs(60),
        || all_proxies(&p_ports, &host, &after, 401),
    );
    assert!(all_proxies(&p_ports, &host, &victim, 401));
    println!("== kube-apiserver restarted: controllers reconnected, nothing lost");

    // --- an expired revocation is pruned by the leader ---
    let soon = Command::new("date")
        .args(["-u", "-d", "+2 seconds", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .unwrap();
    let soon = String::from_utf8(soon.stdout).unwrap();
    patch(
        "tokenpolicy",
        "default",
        ns,
        "json",
        &format!(
            r#"[{{"op":"add","path":"/spec/revocations/-","value":{{"jti":"short-lived","expiresAt":"{}"}}}}]"#,
            soon.trim()
        ),
    );
    wait_until("pruned", Duration::from_secs(30), || {
        !k(&["get", "tokenpolicy", "default", "-n", ns, "-o", "json"]).contains("short-lived")
    });
    assert!(
        k(&["get", "tokenpolicy", "default", "-n", ns, "-o", "json"]).contains("while-down"),
        "pruning removed a live revocation"
    );
    println!("== expired revocation pruned by the leader");
}
