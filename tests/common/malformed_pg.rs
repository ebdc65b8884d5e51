//! A stand-in for a misbehaving PostgreSQL server (or a proxy in front of one) that answers
//! every login with an error whose SQLSTATE is malformed (one character, where PostgreSQL always
//! sends five). A real server cannot be made to do that, so this speaks just enough of the
//! PostgreSQL wire protocol (v3: refuses TLS with `N`, reads the startup message, answers an
//! `ErrorResponse`); the bytes are parsed by tokio-postgres, the client library the agent uses,
//! not by code of ours.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The SSLRequest code of the protocol.
const SSL_REQUEST: u32 = 80_877_103;

pub struct MalformedPostgres {
    pub port: u16,
    /// Logins answered so far.
    pub answered: Arc<AtomicU64>,
}

impl MalformedPostgres {
    /// Listens on a free loopback port; each connection gets its error (`sqlstate`, `message`)
    /// from its own thread.
    pub fn start(sqlstate: &'static str, message: &'static str) -> MalformedPostgres {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let answered = Arc::new(AtomicU64::new(0));
        let count = Arc::clone(&answered);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let count = Arc::clone(&count);
                std::thread::spawn(move || {
                    if answer(conn, sqlstate, message).is_ok() {
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
        });
        MalformedPostgres { port, answered }
    }
}

/// One length-prefixed startup-phase message (no type byte): its body.
fn read_startup(conn: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    conn.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    let mut body = vec![0u8; len.saturating_sub(4)];
    conn.read_exact(&mut body)?;
    Ok(body)
}

fn answer(mut conn: TcpStream, sqlstate: &str, message: &str) -> std::io::Result<()> {
    let mut body = read_startup(&mut conn)?;
    if body.len() == 4 && u32::from_be_bytes(body[..4].try_into().unwrap()) == SSL_REQUEST {
        conn.write_all(b"N")?; // no TLS here; the client goes on in plain text
        body = read_startup(&mut conn)?;
    }
    // The startup message: protocol 3.0, then key/value pairs.
    assert_eq!(&body[..4], &196_608u32.to_be_bytes(), "protocol 3.0");
    let mut fields = Vec::new();
    for (code, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', sqlstate),
        (b'M', message),
    ] {
        fields.push(code);
        fields.extend_from_slice(value.as_bytes());
        fields.push(0);
    }
    fields.push(0);
    let mut msg = vec![b'E'];
    msg.extend_from_slice(&(u32::try_from(fields.len() + 4).unwrap()).to_be_bytes());
    msg.extend_from_slice(&fields);
    conn.write_all(&msg)?;
    conn.flush()
}
