use std::process::Command;
use std::time::Duration;

use rampart_testkit::{find_program, free_port, wait_port, Proc};

use crate::common::{get, request, start_web};

/// nginx as "the user's own application server".
fn start_nginx(dir: &std::path::Path, root: &std::path::Path) -> (Proc, u16) {
    let port = free_port();
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log;\n\
             events {{ worker_connections 256; }}\n\
             http {{ access_log off; client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n\
               server {{ listen 127.0.0.1:{port}; root {r};\n\
                 location /echo {{ default_type text/plain; return 200 \"$request_method xff=$http_x_forwarded_for host=$http_host proto=$http_x_forwarded_proto conn=$http_connection\\n\"; }}\n\
                 location /created {{ return 201 \"made\\n\"; }}\n\
               }} }}\n",
            d = dir.display(),
            r = root.display()
        ),
    )
    .expect("nginx conf");
    let nginx = find_program("nginx", &["/usr/sbin"])
        .expect("nginx is needed (apt-get install nginx-light)");
    let mut c = Command::new(nginx);
    c.arg("-c").arg(&conf).arg("-p").arg(dir);
    let p = Proc::spawn("nginx", c, &dir.join("nginx.log"));
    assert!(
        wait_port(([127, 0, 0, 1], port).into(), Duration::from_secs(10)),
        "nginx did not start"
    );
    (p, port)
}

#[test]
fn proxies_what_is_not_a_static_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let local = dir.path().join("local");
    let app = dir.path().join("app");
    std::fs::create_dir_all(&local).expect("dir");
    std::fs::create_dir_all(&app).expect("dir");
    std::fs::write(local.join("local.txt"), "served locally\n").expect("w");
    std::fs::write(app.join("remote.txt"), "from the app\n").expect("w");
    let big: Vec<u8> = (0..5 * 1024 * 1024u32).map(|i| (i % 241) as u8).collect();
    std::fs::write(app.join("big.bin"), &big).expect("w");
    let (_nginx, port) = start_nginx(dir.path(), &app);
    let up = format!("127.0.0.1:{port}");
    let w = start_web(
        "proxy1",
        &["--root", local.to_str().expect("utf8"), "--upstream", &up],
        dir.path(),
    );

    let r = get(w.addr, "/local.txt", &[]);
    assert_eq!((r.status, r.text().as_str()), (200, "served locally\n"));
    let r = get(w.addr, "/remote.txt", &[]);
    assert_eq!((r.status, r.text().as_str()), (200, "from the app\n"));
    assert_eq!(r.header("x-served-by"), Some("proxy1"));
    assert!(r.header("server").is_some_and(|s| s.starts_with("nginx")));
    let r = request(
        w.addr,
        "POST",
        "/echo?q=1",
        &[("X-Forwarded-For", "10.1.2.3")],
        b"hello",
    );
    assert_eq!(r.status, 200);
    let t = r.text();
    assert!(
        t.starts_with("POST xff=10.1.2.3, 127.0.0.1 host=127.0.0.1:"),
        "{t}"
    );
    assert!(t.contains("proto=http"), "{t}");
    assert!(
        !t.contains("conn=close"),
        "hop-by-hop Connection forwarded: {t}"
    );
    assert_eq!(request(w.addr, "PUT", "/created", &[], b"x").status, 201);
    let r = get(w.addr, "/missing", &[]);
    assert_eq!(r.status, 404, "the app's 404 comes through");
    let r = get(w.addr, "/big.bin", &[]);
    assert!(
        r.body == big,
        "streamed body differs ({} bytes)",
        r.body.len()
    );
}

#[test]
fn a_dead_upstream_is_a_502() {
    let dir = tempfile::tempdir().expect("tempdir");
    let up = format!("127.0.0.1:{}", free_port());
    let w = start_web(
        "proxy2",
        &[
            "--root",
            dir.path().to_str().expect("utf8"),
            "--upstream",
            &up,
        ],
        dir.path(),
    );
    let r = get(w.addr, "/anything", &[]);
    assert_eq!(r.status, 502);
    assert_eq!(r.header("x-served-by"), Some("proxy2"));
}
