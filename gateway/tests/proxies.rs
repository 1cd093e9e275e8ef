//! The client address behind real load balancers (security issue §2): a client that sends its
//! own `X-Forwarded-For` cannot pick its address, behind nginx (which merges the header into
//! one line, the client's value first) and behind HAProxy (`option forwardfor` adds a second
//! line after the client's). Three connections with three spoofed addresses are all counted as
//! the one real client: with `GATEWAY_MAX_CONNECTIONS_PER_IP=2`, the third is refused with 429.
//! With the first line believed (the old rule), HAProxy let each spoofed address through.

mod common;
use common::*;
use dashstream_testkit::free_port;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A proxy process (nginx or HAProxy) with its own config in a temp dir, killed on drop.
struct Proxy {
    child: Child,
    dir: std::path::PathBuf,
    addr: String,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn nginx(upstream: &str) -> Proxy {
    let dir = std::env::temp_dir().join(unique("nginx"));
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let conf = format!(
        "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/logs/error.log;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
         server {{\n    listen {addr};\n    location / {{\n      proxy_pass http://{upstream};\n\
         proxy_http_version 1.1;\n      proxy_set_header Upgrade $http_upgrade;\n\
         proxy_set_header Connection \"upgrade\";\n      proxy_set_header Host $host;\n\
         proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n    }}\n  }}\n}}\n",
        d = dir.display()
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let child = Command::new("/usr/sbin/nginx")
        .args(["-p", dir.to_str().unwrap(), "-c"])
        .arg(dir.join("nginx.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx (test.sh installs it)");
    Proxy { child, dir, addr }
}

fn haproxy(upstream: &str) -> Proxy {
    let dir = std::env::temp_dir().join(unique("haproxy"));
    std::fs::create_dir_all(&dir).unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let conf = format!(
        "global\n  maxconn 512\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n\
         timeout server 60s\n  timeout tunnel 1h\nfrontend f\n  bind {addr}\n  option forwardfor\n\
         default_backend b\nbackend b\n  server g1 {upstream}\n"
    );
    std::fs::write(dir.join("haproxy.cfg"), conf).unwrap();
    let child = Command::new("/usr/sbin/haproxy")
        .arg("-db")
        .arg("-f")
        .arg(dir.join("haproxy.cfg"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("haproxy (test.sh installs it)");
    Proxy { child, dir, addr }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_spoofed_forwarded_for_is_not_believed_behind_nginx_or_haproxy() {
    deadline(120, async {
        let sys = System::new("proxies", 1, None).await;
        let _ingest = sys.ingest(&[]).await;
        sys.produce(sys.produce_options(10, None)).await;
        sys.wait_streams().await;
        let gw = sys
            .gateway(
                "g1",
                &["--trusted-proxies=127.0.0.1", "--max-connections-per-ip=2"],
            )
            .await;
        for proxy in [nginx(&gw.addr), haproxy(&gw.addr)] {
            let name = proxy.dir.file_name().unwrap().to_string_lossy().to_string();
            wait_for(&format!("{name} listening"), Duration::from_secs(20), || async {
                tokio::net::TcpStream::connect(&proxy.addr).await.ok().map(|_| ())
            })
            .await;
            let mut held = Vec::new();
            for spoofed in ["203.0.113.1", "203.0.113.2"] {
                let mut c = connect_with(&proxy.addr, "from=latest", &[("x-forwarded-for", spoofed)])
                    .await
                    .unwrap_or_else(|e| panic!("{name}: {spoofed}: {e:?}"));
                assert!(
                    matches!(c.next(Duration::from_secs(10)).await, Some(Frame::Welcome { .. })),
                    "{name}"
                );
                held.push(c);
            }
            let refused =
                connect_with(&proxy.addr, "from=latest", &[("x-forwarded-for", "203.0.113.3")]).await;
            match refused {
                Err((429, body)) => assert!(body.contains("TOO_MANY_CONNECTIONS"), "{name}: {body}"),
                Err(other) => panic!("{name}: {other:?}"),
                Ok(_) => panic!(
                    "{name}: a third connection was let through: the spoofed X-Forwarded-For was believed"
                ),
            }
            for c in held {
                c.close().await;
            }
            // The slots are free again once the connections are gone.
            wait_for(&format!("{name}: slots released"), Duration::from_secs(10), || async {
                let c = connect_with(&proxy.addr, "from=latest", &[]).await.ok()?;
                c.close().await;
                Some(())
            })
            .await;
        }
    })
    .await;
}
