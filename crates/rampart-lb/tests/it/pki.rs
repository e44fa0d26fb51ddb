//! Test certificates made by the `openssl` CLI: a root CA, an intermediate, and leaves
//! (ECDSA P-256 or RSA 2048) for given names, with their chains.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Key types of leaves.
#[derive(Clone, Copy)]
pub enum Alg {
    Ecdsa,
    Rsa,
}

fn openssl(args: &[&str], dir: &Path) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl (apt-get install openssl)");
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
}

/// Run a blocking command off the runtime.
pub async fn run(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.output().expect("run a client"))
        .await
        .unwrap()
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A root CA and an intermediate in `dir` (`root.pem`, `inter.pem` and their keys).
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    pub fn new(dir: &Path) -> Pki {
        openssl(
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=test root",
                "-keyout",
                "root.key",
                "-out",
                "root.pem",
            ],
            dir,
        );
        std::fs::write(
            dir.join("ca.ext"),
            "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n",
        )
        .unwrap();
        let pki = Pki {
            dir: dir.to_path_buf(),
        };
        pki.sign("inter", Alg::Ecdsa, "root", "ca.ext");
        pki
    }

    /// The root certificate clients trust.
    pub fn root(&self) -> PathBuf {
        self.dir.join("root.pem")
    }

    /// `<name>.pem` and `<name>.key` signed by `issuer` with the extensions in `ext`.
    fn sign(&self, name: &str, alg: Alg, issuer: &str, ext: &str) {
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let subj = format!("/CN={name}");
        let mut args = vec![
            "req", "-new", "-nodes", "-subj", &subj, "-keyout", &key, "-out", &csr,
        ];
        match alg {
            Alg::Ecdsa => {
                args.extend(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"])
            }
            Alg::Rsa => args.extend(["-newkey", "rsa:2048"]),
        }
        openssl(&args, &self.dir);
        let ca = format!("{issuer}.pem");
        let ca_key = format!("{issuer}.key");
        let out = format!("{name}.pem");
        openssl(
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                ext,
                "-out",
                &out,
            ],
            &self.dir,
        );
    }

    /// A leaf `<name>` (CN = name) for `dns` names and 127.0.0.1, signed by the
    /// intermediate; `usage` is `serverAuth` or `clientAuth`. Returns (chain file with the
    /// leaf then the intermediate, key file).
    pub fn leaf(&self, name: &str, alg: Alg, dns: &[&str], usage: &str) -> (PathBuf, PathBuf) {
        let mut san: Vec<String> = dns.iter().map(|d| format!("DNS:{d}")).collect();
        san.push("IP:127.0.0.1".into());
        let ext = format!("{name}.ext");
        std::fs::write(
            self.dir.join(&ext),
            format!(
                "basicConstraints=CA:FALSE\nextendedKeyUsage={usage}\nsubjectAltName={}\n",
                san.join(",")
            ),
        )
        .unwrap();
        self.sign(name, alg, "inter", &ext);
        let chain = self.dir.join(format!("{name}-chain.pem"));
        let mut pem = std::fs::read(self.dir.join(format!("{name}.pem"))).unwrap();
        pem.extend(std::fs::read(self.dir.join("inter.pem")).unwrap());
        std::fs::write(&chain, pem).unwrap();
        (chain, self.dir.join(format!("{name}.key")))
    }
}
