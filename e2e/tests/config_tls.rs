//! The config stream over TLS, on a real kube-apiserver + etcd: the controller serves its
//! push endpoint with a certificate from files and requires proxies to present a client
//! certificate (mutual TLS, besides their ServiceAccount token); proxies verify it against
//! a CA bundle. The certificate is rotated in the middle (new files, no restart), and
//! revocations keep flowing. A second replica relays quota leases to the leader over TLS
//! too (its pod-IP-style URL verified against the name in `--peer-server-name`). Run by
//! `e2e/run.sh`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use portcullis_e2e::kubectl::{apply, install_crds, k, namespace, service_account_token};
use portcullis_e2e::{
    Proc, free_port, http_get, repo, start_controller, start_proxy, status, wait_until,
};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

const NS: &str = "tls-e2e";
const HOST: &str = "tls-e2e.test";

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

fn ca() -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

/// A leaf for `names`, as (certificate PEM, key PEM).
fn leaf(ca: &Ca, names: &[&str]) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let cert = CertificateParams::new(names)
        .unwrap()
        .signed_by(&key, &ca.issuer)
        .unwrap();
    (cert.pem(), key.serialize_pem())
}

/// Writes `content` to `path` the way a Secret volume updates: a new file renamed over.
fn put(path: &Path, content: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn manifests(echo: u16) -> String {
    let policy = std::fs::read_to_string(repo().join("examples/quickstart/policy.yaml")).unwrap();
    let route = std::fs::read_to_string(repo().join("examples/quickstart/route.yaml")).unwrap();
    format!("{policy}\n---\n{route}")
        .replace("namespace: default", &format!("namespace: {NS}"))
        .replace("- localhost", &format!("- {HOST}"))
        .replace("[localhost]", &format!("[{HOST}]"))
        .replace("http://127.0.0.1:9000", &format!("http://127.0.0.1:{echo}"))
}

fn mint(jti: &str) -> String {
    mint_for("alice", jti)
}

fn mint_for(sub: &str, jti: &str) -> String {
    portcullis_e2e::mint_token(
        &repo().join("examples/quickstart/dev-private.pem"),
        &[
            "--sub",
            sub,
            "--scope",
            "orders:read",
            "--ttl",
            "10m",
            "--jti",
            jti,
        ],
    )
}

fn ready(admin: u16) -> bool {
    http_get(admin, "/readyz").0 == 200
}

#[test]
#[ignore = "needs the e2e control plane: run e2e/run.sh"]
fn config_stream_over_mutual_tls_with_a_rotation() {
    let tmp: PathBuf =
        std::env::temp_dir().join(format!("portcullis-tls-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    install_crds();
    namespace(NS);
    let sa_token = service_account_token("portcullis-proxy", &tmp);
    let file = |n: &str| tmp.join(n);

    // Two CAs: the controller's certificate moves from the first to the second.
    let (old, new, clients) = (ca(), ca(), ca());
    put(&file("both.pem"), &format!("{}{}", old.pem, new.pem));
    put(&file("new-only.pem"), &new.pem);
    // Proxies present certificates of `clients`; replicas relaying quota leases present
    // their own serving certificate (of `old`, later `new`).
    put(
        &file("clients.pem"),
        &format!("{}{}{}", clients.pem, old.pem, new.pem),
    );
    let (c, key) = leaf(&old, &["localhost"]);
    put(&file("tls.crt"), &c);
    put(&file("tls.key"), &key);
    let (pc, pk) = leaf(&clients, &["portcullis-proxy"]);
    put(&file("proxy.crt"), &pc);
    put(&file("proxy.key"), &pk);

    let echo = free_port();
    let _echo = Proc::start(
        "tls-echo",
        &["echo", "--listen", &format!("127.0.0.1:{echo}")],
    );
    apply(&manifests(echo));
    let c_ports = [free_port(), free_port()];
    let c_port = c_ports[0];
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    // Two replicas; each advertises its address as an IP (as a pod does), which its
    // certificate does not name: relays verify the name `localhost` instead.
    let controller = |i: usize| {
        let advertise = format!("https://127.0.0.1:{}", c_ports[i]);
        start_controller(
            &format!("tls-controller-{i}"),
            c_ports[i],
            free_port(),
            &[
                "--lease-name",
                "tls-e2e-controller",
                "--tls-cert",
                &s(&file("tls.crt")),
                "--tls-key",
                &s(&file("tls.key")),
                "--tls-client-ca",
                &s(&file("clients.pem")),
                "--advertise-url",
                &advertise,
                "--peer-ca",
                &s(&file("both.pem")),
                "--peer-server-name",
                "localhost",
            ],
        )
    };
    let _controllers = [controller(0), controller(1)];
    let url_of = |port: u16| format!("https://localhost:{port}");
    let proxy_on = |port: u16, name: &str, ca: &str, client_cert: bool| {
        let (p, a) = (free_port(), free_port());
        let mut extra = vec![
            "--controller".to_owned(),
            url_of(port),
            "--controller-ca".to_owned(),
            s(&file(ca)),
        ];
        if client_cert {
            extra.extend([
                "--controller-client-cert".to_owned(),
                s(&file("proxy.crt")),
                "--controller-client-key".to_owned(),
                s(&file("proxy.key")),
            ]);
        }
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        // `start_proxy` names an http controller first; ours comes after and wins.
        (start_proxy(name, port, &sa_token, (p, a), &extra), p, a)
    };
    let proxy = |name: &str, ca: &str, client_cert: bool| proxy_on(c_port, name, ca, client_cert);
    let (_p0, p0, a0) = proxy("tls-proxy-0", "both.pem", true);
    let (_p1, p1, a1) = proxy_on(c_ports[1], "tls-proxy-1", "both.pem", true);
    for a in [a0, a1] {
        wait_until("proxies ready over TLS", Duration::from_secs(30), || {
            ready(a)
        });
    }
    let t1 = mint("tls-1");
    wait_until(
        "served through both proxies",
        Duration::from_secs(20),
        || {
            [p0, p1]
                .iter()
                .all(|p| status(*p, HOST, "/orders", Some(&t1)) == 200)
        },
    );

    // Without a client certificate, or trusting only the next CA: no config.
    let (_n0, _, na0) = proxy("tls-proxy-nocert", "both.pem", false);
    let (_n1, _, na1) = proxy("tls-proxy-newca", "new-only.pem", true);
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !ready(na0),
        "a proxy without a client certificate got the config"
    );
    assert!(
        !ready(na1),
        "a proxy that cannot verify the controller got the config"
    );
    println!(
        "== config stream over mutual TLS: proxies without a client certificate or the CA refused"
    );

    // Rotation: new files, the controller re-reads them.
    let (c, key) = leaf(&new, &["localhost"]);
    put(&file("tls.key"), &key);
    put(&file("tls.crt"), &c);
    // A proxy trusting only the new CA connects once the new certificate is served.
    let (_p2, p2, a2) = proxy("tls-proxy-2", "new-only.pem", true);
    wait_until(
        "a proxy trusting only the new CA is served",
        Duration::from_secs(30),
        || ready(a2),
    );
    // Revocations keep flowing to every proxy, old connections and new.
    k(&[
        "patch",
        "tokenpolicy",
        "default",
        "-n",
        NS,
        "--type",
        "json",
        "-p",
        r#"[{"op":"add","path":"/spec/revocations/-","value":{"jti":"tls-1"}}]"#,
    ]);
    wait_until(
        "revoked on all three proxies",
        Duration::from_secs(10),
        || {
            [p0, p1, p2]
                .iter()
                .all(|p| status(*p, HOST, "/orders", Some(&t1)) == 401)
        },
    );
    let t2 = mint("tls-2");
    assert!(
        [p0, p1, p2]
            .iter()
            .all(|p| status(*p, HOST, "/orders", Some(&t2)) == 200)
    );
    println!(
        "== controller certificate rotated without a restart: new proxies verify it, revocations still reach every proxy"
    );

    // Quota leases through both replicas: the proxy on the replica that does not lead
    // leases through a relay over mutual TLS (refused: 503, as rate limits fail closed).
    k(&[
        "patch",
        "tokenpolicy",
        "default",
        "-n",
        NS,
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"rateLimits":[{"name":"per-subject","key":"subject","requests":4,"period":"minute"}]}}"#,
    ]);
    let bob = mint_for(&format!("bob-{}", std::process::id()), "tls-3");
    let probe = mint_for(&format!("probe-{}", std::process::id()), "tls-4");
    // The probe subject uses up its 4 requests: then both proxies refuse it (429), which
    // also shows the rate limit applied everywhere (a failed relay answers 503).
    wait_until(
        "the rate limit applied on both proxies, leases relayed over TLS",
        Duration::from_secs(30),
        || {
            status(p0, HOST, "/orders", Some(&probe)) == 429
                && status(p1, HOST, "/orders", Some(&probe)) == 429
        },
    );
    let codes: Vec<u16> = (0..6)
        .map(|i| status([p0, p1][i % 2], HOST, "/orders", Some(&bob)))
        .collect();
    let ok = codes.iter().filter(|c| **c == 200).count();
    assert_eq!(
        ok, 4,
        "4 requests a minute across both replicas' proxies, one of them relayed over TLS: {codes:?}"
    );
    assert!(
        codes.iter().all(|c| *c == 200 || *c == 429),
        "a relay over TLS failed (503 = leader unreachable): {codes:?}"
    );
    println!("== quota leases relayed between replicas over mutual TLS: {codes:?}");
}
