//! Headless Chromium driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`:
//! commands in on fd 3, replies out on fd 4, each a JSON text ended by a NUL byte), so a
//! test reads a live page as often as it likes while the page runs in real time, and takes
//! screenshots of it. No WebSocket and no library: `sh` maps the child's stdin and stdout
//! pipes onto fds 3 and 4.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

/// Chromium, when installed (scripts/deps.sh installs it).
pub fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|n| rampart_testkit::find_program(n, &["/usr/bin", "/snap/bin"]))
}

pub struct Browser {
    child: Child,
    stdin: ChildStdin,
    replies: Receiver<Value>,
    next_id: u64,
    session: String,
    log: PathBuf,
}

impl Browser {
    /// Start Chromium (own process group, profile and log under `dir`) showing `url`.
    pub fn open(chromium: &Path, url: &str, dir: &Path, window: (u32, u32)) -> Browser {
        let log = dir.join("chromium.log");
        let mut child = Command::new("sh")
            .arg("-c")
            .arg("exec \"$0\" \"$@\" 3<&0 4>&1 0</dev/null 1>/dev/null")
            .arg(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                "--no-first-run",
                "--remote-debugging-pipe",
            ])
            .arg(format!("--window-size={},{}", window.0, window.1))
            .arg(format!(
                "--user-data-dir={}",
                dir.join("chromium-profile").display()
            ))
            .arg("about:blank")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("chromium log"))
            .process_group(0)
            .spawn()
            .expect("start chromium");
        let stdin = child.stdin.take().expect("chromium stdin");
        let stdout = child.stdout.take().expect("chromium stdout");
        let (tx, replies) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            loop {
                let mut msg = Vec::new();
                match r.read_until(0, &mut msg) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        msg.pop();
                        if let Ok(v) = serde_json::from_slice::<Value>(&msg) {
                            if tx.send(v).is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        });
        let mut b = Browser {
            child,
            stdin,
            replies,
            next_id: 0,
            session: String::new(),
            log,
        };
        let target = b
            .call("Target.createTarget", json!({ "url": url }))
            .unwrap_or_else(|e| panic!("open {url}: {e}\n{}", b.log_text()));
        let id = target["targetId"].as_str().unwrap_or_default().to_string();
        let attached = b
            .call(
                "Target.attachToTarget",
                json!({ "targetId": id, "flatten": true }),
            )
            .unwrap_or_else(|e| panic!("attach: {e}\n{}", b.log_text()));
        b.session = attached["sessionId"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        b
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// One command (on the page's session once attached); its result, or its error.
    pub fn call(&mut self, method: &str, params: Value) -> Result<Value, String> {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if !self.session.is_empty() {
            msg["sessionId"] = json!(self.session);
        }
        let mut bytes = serde_json::to_vec(&msg).map_err(|e| e.to_string())?;
        bytes.push(0);
        self.stdin
            .write_all(&bytes)
            .and_then(|()| self.stdin.flush())
            .map_err(|e| format!("write to chromium: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.replies.recv_timeout(left) {
                Ok(v) if v["id"].as_u64() == Some(id) => {
                    return match v.get("error") {
                        Some(e) => Err(format!("{method}: {e}")),
                        None => Ok(v["result"].clone()),
                    };
                }
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!("{method}: no reply in 30 s"))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(format!("{method}: chromium exited"))
                }
            }
        }
    }

    /// The value of a JavaScript expression in the page (JSON-serialisable values).
    pub fn eval(&mut self, expr: &str) -> Result<Value, String> {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": expr, "returnByValue": true, "awaitPromise": true }),
        )?;
        if let Some(e) = r.get("exceptionDetails") {
            return Err(format!("{expr}: {e}"));
        }
        Ok(r["result"]["value"].clone())
    }

    /// A PNG of the whole page as it is now.
    pub fn screenshot(&mut self) -> Result<Vec<u8>, String> {
        let r = self.call(
            "Page.captureScreenshot",
            json!({ "format": "png", "captureBeyondViewport": true }),
        )?;
        base64_decode(r["data"].as_str().ok_or("no screenshot data")?)
    }

    /// A PNG of the element a CSS selector picks (its bounding box in the page).
    pub fn screenshot_of(&mut self, selector: &str) -> Result<Vec<u8>, String> {
        let sel = serde_json::to_string(selector).map_err(|e| e.to_string())?;
        let rect = self.eval(&format!(
            "(() => {{ const r = document.querySelector({sel}).getBoundingClientRect(); \
             return [r.left + scrollX, r.top + scrollY, r.width, r.height]; }})()"
        ))?;
        let n = |i: usize| rect[i].as_f64().unwrap_or(0.0);
        let r = self.call(
            "Page.captureScreenshot",
            json!({ "format": "png", "captureBeyondViewport": true,
                    "clip": { "x": n(0), "y": n(1), "width": n(2), "height": n(3), "scale": 1 } }),
        )?;
        base64_decode(r["data"].as_str().ok_or("no screenshot data")?)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.session.clear();
        let _ = self.call("Browser.close", json!({}));
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Whatever is left of it (renderers, zygote) is in its process group.
        let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// Standard base64 (with padding), what DevTools sends binary data as.
fn base64_decode(s: &str) -> Result<Vec<u8>, String> {
    let val = |c: u8| -> Result<u32, String> {
        Ok(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return Err(format!("not base64: {:?}", c as char)),
        } as u32)
    };
    let bytes: Vec<u8> = s.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for chunk in bytes.chunks(4) {
        let pad = chunk.iter().rev().take_while(|c| **c == b'=').count();
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= if *c == b'=' { 0 } else { val(*c)? } << (18 - 6 * i);
        }
        let got = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&got[..3 - pad.min(2)]);
    }
    Ok(out)
}

#[test]
fn base64_decodes_what_devtools_sends() {
    assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
    assert_eq!(base64_decode("aGk=").unwrap(), b"hi");
    assert_eq!(base64_decode("aGV5").unwrap(), b"hey");
    assert!(base64_decode("a$==").is_err());
}
